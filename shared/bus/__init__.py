"""The message bus: request/reply to services and PUB/SUB events.

``interface`` holds the types and protocols; ``memory`` an in-process
implementation for unit tests; ``zmq_bus`` the ZeroMQ implementation (the only
module that imports ``zmq``).
"""
