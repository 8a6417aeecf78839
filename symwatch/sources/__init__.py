"""Message sources the views read from (live, remote, replayed), opened one way.

base.py: the `MessageSource` protocol, its optional capabilities and `SourceError`;
open.py: `open_source(target)` for an endpoint, an ssh:// run or a recording;
memory.py: `ListSource`; replay.py: `ReplaySource`; tunnel.py: `TunnelFeed` (a live feed
through an ssh tunnel); discovery.py: the runs here and on remembered hosts (the Runs screen's).
"""
