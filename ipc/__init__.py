"""Length-prefixed JSON frames between peers over Unix sockets.

Nothing here knows what an agent is: this package moves typed envelopes (``{"t": type, "id"|"re": ...}``)
between two ends of a socket, correlates requests with their replies and streamed chunks, and guards the
socket (private directory, 0600 mode, peer uid check). It is imported by the light CLI client, so it keeps
its top level free of asyncio: the async parts live in ``peer`` and ``server``.
"""
