package semaphore

// Keys on a node, for a semaphore whose base key is B:
//
//	B:<slot>          the slot's holder id, with the lease TTL
//	B:h:<holder>      "<slot>:<nonce>": the slot this holder claimed on this
//	                  node and the acquisition that claimed it ("<slot>:"
//	                  once renewed), same TTL. It makes a retried Acquire with
//	                  the same holder id idempotent without scanning every
//	                  slot, and lets a failed acquisition cancel its claim.
//	B:record:<holder> hash: the lease record (granted, pod, owner,
//	                  owner_api, owner_uid, uid), written and expired with
//	                  the holder's claim key, deleted with it.
//	B:c:<nonce>       a settled acquisition: "-1" when it failed (its claims
//	                  are refused), else the slot it won (a claim of that
//	                  slot is let through, any other refused). It also
//	                  covers the claims a hung node runs after it resumes.
//
// The scripts build slot keys from the base key instead of receiving all N
// keys, so an Acquire on a semaphore of 1024 slots sends a few bytes, not
// 1024 key names. That is fine on standalone Redis servers, which is all this
// package supports.

// acquireScript claims a slot for ARGV[1] with TTL ARGV[2] ms, scanning the
// ARGV[3] slots in the order ARGV[4], ARGV[4]+ARGV[6], ARGV[4]+2*ARGV[6]...
// (modulo the size; the stride is coprime with it, so every slot comes once),
// for the acquisition ARGV[5]. It answers
// {1, slot} when the holder holds a slot (new or from an earlier attempt,
// whose TTL it refreshes), {2, 0} when the acquisition failed, or won
// another slot that is taken here, before this claim arrived,
// and {0, fingerprints} when every slot is held by someone else: the first
// fpLen characters of each slot's holder, slot after slot. Fingerprints let
// the client tell a semaphore that is full (every slot held by one holder on
// a quorum) from one whose slots are only claimed, one node each, by
// acquirers racing for them: the latter is worth another attempt.
const acquireScript = `
local base = KEYS[1]
local holder = ARGV[1]
local ttl = ARGV[2]
local size = tonumber(ARGV[3])
local start = tonumber(ARGV[4])
local stride = tonumber(ARGV[6])
local claim = ':' .. ARGV[5]
local hkey = base .. ':h:' .. holder
local settled = redis.call('GET', base .. ':c:' .. ARGV[5])
if settled then
  if settled == '-1' then
    return {2, 0}
  end
  local skey = base .. ':' .. settled
  local v = redis.call('GET', skey)
  if v and v ~= holder then
    return {2, 0}
  end
  redis.call('SET', skey, holder, 'PX', ttl)
  redis.call('SET', hkey, settled .. claim, 'PX', ttl)
  keep_record(base, holder, ttl, 7)
  return {1, tonumber(settled)}
end
local mine = redis.call('GET', hkey)
if mine then
  local slot = string.match(mine, '^%d+')
  if slot and tonumber(slot) < size and redis.call('GET', base .. ':' .. slot) == holder then
    redis.call('PEXPIRE', base .. ':' .. slot, ttl)
    redis.call('SET', hkey, slot .. claim, 'PX', ttl)
    keep_record(base, holder, ttl, 7)
    return {1, tonumber(slot)}
  end
end
for i = 0, size - 1 do
  local s = (start + i * stride) % size
  local skey = base .. ':' .. s
  if redis.call('EXISTS', skey) == 0 then
    redis.call('SET', skey, holder, 'PX', ttl)
    redis.call('SET', hkey, s .. claim, 'PX', ttl)
    keep_record(base, holder, ttl, 7)
    return {1, s}
  end
end
local fps = {}
for s = 0, size - 1 do
  local v = redis.call('GET', base .. ':' .. s)
  fps[s + 1] = string.sub((v or '') .. '------', 1, 6)
end
return {0, table.concat(fps)}
`

// fpLen is the length of a holder fingerprint in acquireScript's answer.
const fpLen = 6

// renewScript extends slot ARGV[2] to TTL ARGV[3] ms when it holds ARGV[1].
// Answers 1 renewed, 0 the key is gone, -1 another holder has the slot.
const renewScript = `
local base = KEYS[1]
local holder = ARGV[1]
local skey = base .. ':' .. ARGV[2]
local v = redis.call('GET', skey)
if v == holder then
  redis.call('PEXPIRE', skey, ARGV[3])
  redis.call('SET', base .. ':h:' .. holder, ARGV[2] .. ':', 'PX', ARGV[3])
  keep_record(base, holder, ARGV[3], 4)
  return 1
end
if v then
  return -1
end
return 0
`

// repairScript re-creates slot ARGV[2] for ARGV[1] with TTL ARGV[3] ms on a
// node that lost it (a restart without its data), only where the slot is
// free. The caller runs it only while the lease is valid on a quorum.
const repairScript = `
local base = KEYS[1]
local holder = ARGV[1]
if redis.call('SET', base .. ':' .. ARGV[2], holder, 'NX', 'PX', ARGV[3]) then
  redis.call('SET', base .. ':h:' .. holder, ARGV[2] .. ':', 'PX', ARGV[3])
  keep_record(base, holder, ARGV[3], 4)
  return 1
end
return 0
`

// releaseScript deletes slot ARGV[2] when it holds ARGV[1]
// (compare-and-delete). Answers 1 deleted, 0 nothing of this holder's there.
const releaseScript = `
local base = KEYS[1]
local holder = ARGV[1]
local skey = base .. ':' .. ARGV[2]
if redis.call('GET', skey) == holder then
  redis.call('DEL', skey)
  local hkey = base .. ':h:' .. holder
  local mine = redis.call('GET', hkey)
  if not mine or string.match(mine, '^%d+') == ARGV[2] then
    redis.call('DEL', hkey)
    redis.call('DEL', base .. ':record:' .. holder)
  end
  return 1
end
return 0
`

// inspectScript answers, for slots 0..ARGV[1]-1, the flat list
// holder1, pttl1, holder2, pttl2... with "" and -2 for a free slot.
const inspectScript = `
local base = KEYS[1]
local out = {}
for s = 0, tonumber(ARGV[1]) - 1 do
  local skey = base .. ':' .. s
  local v = redis.call('GET', skey)
  if v then
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', skey)
  else
    out[#out + 1] = ''
    out[#out + 1] = -2
  end
end
return out
`

// fingerprintsScript answers the fingerprint of every slot's holder, as the
// acquire script does when full, with "------" for a free slot. It changes
// nothing: Acquire asks for it when it must tell a full semaphore from a
// contended one without claiming anything.
const fingerprintsScript = `
local base = KEYS[1]
local fps = {}
for s = 0, tonumber(ARGV[1]) - 1 do
  local v = redis.call('GET', base .. ':' .. s)
  fps[s + 1] = string.sub((v or '') .. '------', 1, 6)
end
return table.concat(fps)
`

// claimScript claims exactly slot ARGV[2] for ARGV[1] with TTL ARGV[3] ms,
// for the acquisition ARGV[4], when it is free or already this holder's.
// Answers 1 claimed, 0 held by another holder, -1 the acquisition was
// settled here with another outcome. Acquire uses it to follow the slot an
// arbiter node chose.
const claimScript = `
local base = KEYS[1]
local holder = ARGV[1]
local settled = redis.call('GET', base .. ':c:' .. ARGV[4])
if settled and settled ~= ARGV[2] then
  return -1
end
local skey = base .. ':' .. ARGV[2]
local v = redis.call('GET', skey)
if v and v ~= holder then
  return 0
end
redis.call('SET', skey, holder, 'PX', ARGV[3])
redis.call('SET', base .. ':h:' .. holder, ARGV[2] .. ':' .. ARGV[4], 'PX', ARGV[3])
keep_record(base, holder, ARGV[3], 5)
return 1
`

// settleScript tells this node the outcome of the acquisition ARGV[2] of
// holder ARGV[1]: ARGV[4] is the slot it won, or -1 when it failed. It
// deletes a claim of that acquisition for any other slot, claims the won
// slot where it is free here (for ARGV[3] ms, the lease TTL: a slot owned
// on a quorum but free on this node would make it pick, for the next
// acquirers, a slot the others refuse), and keeps the outcome for the
// same time, so that a claim that arrives later (a command a hung node
// queued, or one that timed out on the way) claims the won slot or
// nothing. The order in which a node runs the claim
// and the settle does not matter, and a failure, once known, is never
// turned back into a win by a settle that arrives late. (A node hung for
// longer than the TTL can still run a stale claim after the outcome
// expired; it then holds one slot on that node only, for one TTL.) Answers
// 1 when the node holds the won slot for the holder.
const settleScript = `
local base = KEYS[1]
local holder = ARGV[1]
local mark = base .. ':c:' .. ARGV[2]
local outcome = redis.call('GET', mark)
if outcome ~= '-1' then
  outcome = ARGV[4]
  redis.call('SET', mark, outcome, 'PX', ARGV[3])
end
local hkey = base .. ':h:' .. holder
local mine = redis.call('GET', hkey)
if mine then
  local slot, nonce = string.match(mine, '^(%d+):(.*)$')
  if nonce == ARGV[2] and slot ~= outcome then
    local skey = base .. ':' .. slot
    if redis.call('GET', skey) == holder then
      redis.call('DEL', skey)
    end
    redis.call('DEL', hkey)
    redis.call('DEL', base .. ':record:' .. holder)
  end
end
if outcome ~= '-1' then
  local skey = base .. ':' .. outcome
  local v = redis.call('GET', skey)
  if not v or v == holder then
    redis.call('SET', skey, holder, 'PX', ARGV[3])
    redis.call('SET', hkey, outcome .. ':' .. ARGV[2], 'PX', ARGV[3])
    keep_record(base, holder, ARGV[3], 5)
    return 1
  end
end
return 0
`

// recordLua is prepended to the scripts that claim or extend a slot.
// keep_record writes the lease record from ARGV[from..from+4] (granted,
// pod, owner, owner_api, owner_uid) when granted is given, and gives the
// record the claim's TTL either way: a claim made without a record (a
// re-acquisition through the lease API) keeps the one the admission wrote.
const recordLua = `
local function keep_record(base, holder, ttl, from)
  local rkey = base .. ':record:' .. holder
  local granted = ARGV[from]
  if granted and granted ~= '' then
    redis.call('HSET', rkey, 'granted', granted, 'pod', ARGV[from + 1], 'owner', ARGV[from + 2],
      'owner_api', ARGV[from + 3], 'owner_uid', ARGV[from + 4])
  end
  redis.call('PEXPIRE', rkey, ttl)
end
`

// leasesScript answers, for slots 0..ARGV[1]-1, one entry each: {} for a
// free slot, else {holder, pttl, record} with the record as HGETALL answers
// it (empty when the holder has none).
const leasesScript = `
local base = KEYS[1]
local out = {}
for s = 0, tonumber(ARGV[1]) - 1 do
  local skey = base .. ':' .. s
  local v = redis.call('GET', skey)
  if v then
    out[s + 1] = {v, redis.call('PTTL', skey), redis.call('HGETALL', base .. ':record:' .. v)}
  else
    out[s + 1] = {}
  end
end
return out
`

// holdersScript answers, for each holder in ARGV, {slot, pttl, record}: the
// slot it holds on this node (-1 when none) and its record.
const holdersScript = `
local base = KEYS[1]
local out = {}
for i, holder in ipairs(ARGV) do
  local slot, pttl = -1, 0
  local mine = redis.call('GET', base .. ':h:' .. holder)
  if mine then
    local s = string.match(mine, '^%d+')
    if s and redis.call('GET', base .. ':' .. s) == holder then
      slot, pttl = tonumber(s), redis.call('PTTL', base .. ':' .. s)
    end
  end
  out[i] = {slot, pttl, redis.call('HGETALL', base .. ':record:' .. holder)}
end
return out
`
