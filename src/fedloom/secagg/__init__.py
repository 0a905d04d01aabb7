"""Secure aggregation primitives: Shamir sharing, key agreement, encryption, PRG, encoding.

The building blocks of the SecAgg protocol: clients agree on pairwise keys (X25519 +
HKDF), expand seeds into masks (AES-CTR PRG), Shamir-share their seed and private key so
the server can unmask despite dropouts, and encode float updates as fixed-point integers
in Z_(2^bits) so masks cancel exactly in the sum. ``protocol`` assembles them into the
SecAgg+ client and server state machines; ``simulate`` runs a whole round in one process.

References: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017; see ``shamir``, ``crypto`` and ``encoding``.
"""

from fedloom.secagg.crypto import SecAggError, agree, decrypt, encrypt, generate_keypair, prg
from fedloom.secagg.encoding import FixedPoint
from fedloom.secagg.protocol import SecAggClient, SecAggServer
from fedloom.secagg.shamir import (
    PRIME,
    bytes_to_field,
    field_to_bytes,
    lagrange_at_zero,
    reconstruct,
    share,
)
from fedloom.secagg.simulate import SecAggReport, simulate, simulate_encoded

__all__ = [
    "PRIME",
    "FixedPoint",
    "SecAggClient",
    "SecAggError",
    "SecAggReport",
    "SecAggServer",
    "agree",
    "bytes_to_field",
    "decrypt",
    "encrypt",
    "field_to_bytes",
    "generate_keypair",
    "lagrange_at_zero",
    "prg",
    "reconstruct",
    "share",
    "simulate",
    "simulate_encoded",
]
