"""The swarm's control plane: agents and roots talking about who holds what.

Low in volume (a join per blob, batched progress reports, an occasional request for
new parents), so it is plain HTTP with msgspec-encoded JSON bodies, signed with the
cluster secret. Piece bytes never travel here; they go over ``shoal.wire``.
"""
