"""Moving messages: the ZeroMQ subscriber, late join, CurveZMQ keys, the relay, SSH."""
