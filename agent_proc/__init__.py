"""One agent in its own uvloop process: connect, authenticate, initialise, report READY, serve runs.

This package knows one agent and nothing of the others: replies go back to the supervisor, which routes them.
"""
