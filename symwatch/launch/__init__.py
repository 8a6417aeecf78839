"""Starting processes: `symwatch run`'s environment, the demo subprocess, injection into a running process, the web server."""
