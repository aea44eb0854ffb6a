"""Channel domain logic in pure asyncio: sequencing through the Store, fan-out, presence,
resume and per-connection delivery. No HTTP and no database driver live here."""
