"""Secure aggregation: SecAgg+ and what composes with it (DP, quantization).

The building blocks of the SecAgg protocol: clients agree on pairwise keys (X25519 +
HKDF), expand seeds into masks (AES-CTR PRG), Shamir-share their seed and private key so
the server can unmask despite dropouts, optionally sign their keys (Ed25519 / ECDSA
P-256) so a malicious server cannot substitute them, and encode float updates as
fixed-point integers in Z_(2^bits) so masks cancel exactly in the sum. ``protocol``
assembles them into the SecAgg+ client and server state machines; ``simulate`` runs a
whole round in one process; ``cohort`` encodes a training round's updates (FedAvg
weights, DP clipping, loss sums) and hands the server only their sum; ``distributed_dp``
is the distributed discrete Gaussian, differential privacy noise the clients add inside
the sum.

References: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017; Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism
for Federated Learning with Secure Aggregation", ICML 2021; see the modules.
"""

from fedloom.secagg.cohort import SecureAggregator, SecureRound, SecureSum
from fedloom.secagg.crypto import (
    SecAggError,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    generate_signing_key,
    prg,
    sign,
    verify,
)
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian, discrete_gaussian
from fedloom.secagg.encoding import FixedPoint
from fedloom.secagg.protocol import (
    SecAggClient,
    SecAggServer,
    advert_payload,
    default_neighbours,
)
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
    "DistributedDiscreteGaussian",
    "FixedPoint",
    "SecAggClient",
    "SecAggError",
    "SecAggReport",
    "SecAggServer",
    "SecureAggregator",
    "SecureRound",
    "SecureSum",
    "advert_payload",
    "agree",
    "bytes_to_field",
    "decrypt",
    "default_neighbours",
    "discrete_gaussian",
    "encrypt",
    "field_to_bytes",
    "generate_keypair",
    "generate_signing_key",
    "lagrange_at_zero",
    "prg",
    "reconstruct",
    "share",
    "sign",
    "simulate",
    "simulate_encoded",
    "verify",
]
