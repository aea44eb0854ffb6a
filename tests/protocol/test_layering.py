"""protocol/ is sans-I/O: importing it pulls in no asyncio, Starlette or database driver."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("asyncio", "starlette", "uvicorn", "sqlite3", "redis", "websockets")


def test_protocol_imports_no_io_library() -> None:
    code = (
        "import sys\n"
        "import roomcast.protocol.messages, roomcast.protocol.codec, roomcast.protocol.session\n"
        "import roomcast.protocol.rollup, roomcast.protocol.errors\n"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
