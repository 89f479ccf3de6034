"""Asyncio transport over ``shoal.wire``: peer server, peer client, throttle."""
