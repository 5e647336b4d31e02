# Loopback helpers for the bench scripts (sourced).
# free_port: a TCP port of 127.0.0.1 nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
