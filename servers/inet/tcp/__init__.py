"""TCP for inet (RFC 9293), as pure modules: segments are parsed and built here,
each connection is a state machine fed with segments and the time, and what it
sends goes to an output callable; no sockets, threads or sleeps, so the engine
is tested against itself on a simulated wire and against Linux through a TAP.

- ``seq``: 32-bit sequence arithmetic;
- ``segment``: the TCP header with its checksum, MSS the only option built;
- ``rto``: the retransmission timer's estimator (RFC 6298);
- ``congestion``: slow start, congestion avoidance, NewReno (RFC 5681, 6582);
- ``connection``: one TCB (states, buffers, out-of-order queue, timers);
- ``tcp``: the demultiplexer (listeners, connect, 4-tuple lookup, RST, TIME_WAIT).
"""
