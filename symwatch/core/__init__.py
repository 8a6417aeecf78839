"""The contract both halves share, standard library only: the wire protocol, the run registry, history and downsampling, recordings, the jump and transition detectors."""
