"""The wire protocol, sans-I/O: message types, codecs, validation and session state.

This package imports no asyncio, no Starlette and no database driver (a test enforces it),
so servers, clients and tests can all share it.
"""
