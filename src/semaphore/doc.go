// Package semaphore is a distributed counting semaphore over M independent
// Redis servers, taken with a Redlock quorum.
//
// A semaphore of size N is N slot keys, each an independent Redlock mutex that
// holds its holder's random 128-bit id with a TTL. A holder owns a slot only
// when a majority of nodes (M/2+1) hold its id on that slot, so at most one
// holder owns each slot and at most N holders exist, for every N. Counting
// holders per node instead is not safe for N >= 2: holders on {A,B}, {B,C} and
// {A,C} are three holders while every node counts two.
//
// Acquire costs one parallel round trip in the common case: every node runs
// one script that claims the first free slot in a rotation chosen per attempt
// (the same rotation on every node, so uncontended nodes agree). A slot
// claimed on a quorum within the validity time wins; every other claim of the
// attempt is undone.
package semaphore
