"""Composable update transforms: client and server chains over ``[K, d]`` update rows.

See ``docs/transforms.md`` for writing one and naming it in a config.
"""

from fedloom.transforms.base import (
    Chain,
    ClientStates,
    Context,
    State,
    Transform,
    TwoSided,
    build,
    build_chain,
    build_sides,
    chain,
    register,
    registered,
    resolve,
    stack_states,
    unstack_states,
)

__all__ = [
    "Chain",
    "ClientStates",
    "Context",
    "State",
    "Transform",
    "TwoSided",
    "build",
    "build_chain",
    "build_sides",
    "chain",
    "register",
    "registered",
    "resolve",
    "stack_states",
    "unstack_states",
]
