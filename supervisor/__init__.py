"""The supervisor: processes, routes, triggers and time.

`system.Supervisor` runs one system (a config): the control socket, the forkserver, one slot per agent that
keeps its process alive, the embedded model service and the router that carries replies downstream.
"""
