package semaphore

// reply is one node's answer to one operation.
type reply struct {
	node int
	val  any
	err  error
}

// fanout runs op on every node in parallel. The channel is buffered so that
// no goroutine blocks once the caller stops reading.
func (c *Client) fanout(op func(*node) (any, error)) chan reply { return c.fanoutExcept(-1, op) }

// fanoutExcept is fanout to every node but the one at index skip.
func (c *Client) fanoutExcept(skip int, op func(*node) (any, error)) chan reply {
	ch := make(chan reply, len(c.nodes))
	for i, n := range c.nodes {
		if i == skip {
			continue
		}
		go func() {
			v, err := op(n)
			c.metrics.observeNode(n.addr, err)
			ch <- reply{node: i, val: v, err: err}
		}()
	}
	return ch
}

// drain hands the replies that arrive after the caller decided to then, in
// the background, so that a late claim is undone.
func (c *Client) drain(ch chan reply, remaining int, then func(reply)) {
	if remaining <= 0 {
		return
	}
	c.background.Add(1)
	go func() {
		defer c.background.Done()
		c.collect(ch, remaining, then)
	}()
}

// collect is drain in the calling goroutine.
func (c *Client) collect(ch chan reply, remaining int, then func(reply)) {
	for range remaining {
		r := <-ch
		if then != nil {
			then(r)
		}
	}
}
