"""A run's state folded from its messages: layers, ranks, shards; how numbers are written."""
