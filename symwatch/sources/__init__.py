"""Message sources the views read from (live, remote, replayed), opened one way."""
