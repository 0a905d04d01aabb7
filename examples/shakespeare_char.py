"""Next-character prediction on a tiny LEAF Shakespeare folder, one client per sonnet.

LEAF's Shakespeare task gives each speaking role its lines as 80-character contexts
(``x``) and the character that follows each (``y``). This script writes a folder in that
format from four sonnets (public domain), one "role" each, with the last fifth of every
text as its test split, and trains the built-in character model (``model.kind =
"char"``) on it. Point ``data.path`` at a real LEAF ``shakespeare/data`` folder (its
``train/`` and ``test/``) to run the benchmark itself.

    uv run python examples/shakespeare_char.py            # 10 rounds
    uv run python examples/shakespeare_char.py --quick    # 3 rounds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import fedloom

CONTEXT = 80  # LEAF's characters of context per sample
TEST_SHARE = 0.2  # the end of each role's text, kept for testing

SONNETS = {
    "SONNET_18": """Shall I compare thee to a summer's day? Thou art more lovely and more
        temperate: Rough winds do shake the darling buds of May, And summer's lease hath
        all too short a date; Sometime too hot the eye of heaven shines, And often is his
        gold complexion dimm'd; And every fair from fair sometime declines, By chance or
        nature's changing course untrimm'd; But thy eternal summer shall not fade, Nor
        lose possession of that fair thou ow'st; Nor shall Death brag thou wander'st in
        his shade, When in eternal lines to time thou grow'st: So long as men can breathe
        or eyes can see, So long lives this, and this gives life to thee.""",
    "SONNET_29": """When, in disgrace with fortune and men's eyes, I all alone beweep my
        outcast state, And trouble deaf heaven with my bootless cries, And look upon
        myself and curse my fate, Wishing me like to one more rich in hope, Featured like
        him, like him with friends possess'd, Desiring this man's art and that man's
        scope, With what I most enjoy contented least; Yet in these thoughts myself almost
        despising, Haply I think on thee, and then my state, Like to the lark at break of
        day arising From sullen earth, sings hymns at heaven's gate; For thy sweet love
        remember'd such wealth brings That then I scorn to change my state with kings.""",
    "SONNET_73": """That time of year thou mayst in me behold When yellow leaves, or none,
        or few, do hang Upon those boughs which shake against the cold, Bare ruin'd choirs,
        where late the sweet birds sang. In me thou see'st the twilight of such day As
        after sunset fadeth in the west, Which by and by black night doth take away,
        Death's second self, that seals up all in rest. In me thou see'st the glowing of
        such fire That on the ashes of his youth doth lie, As the death-bed whereon it must
        expire, Consumed with that which it was nourish'd by. This thou perceivest, which
        makes thy love more strong, To love that well which thou must leave ere long.""",
    "SONNET_116": """Let me not to the marriage of true minds Admit impediments. Love is
        not love Which alters when it alteration finds, Or bends with the remover to
        remove: O no; it is an ever-fixed mark, That looks on tempests and is never
        shaken; It is the star to every wandering bark, Whose worth's unknown, although
        his height be taken. Love's not Time's fool, though rosy lips and cheeks Within
        his bending sickle's compass come; Love alters not with his brief hours and weeks,
        But bears it out even to the edge of doom. If this be error and upon me proved, I
        never writ, nor no man ever loved.""",
}


def samples(text: str) -> dict[str, list[str]]:
    """Every 80-character window of ``text`` and the character after it."""
    ends = range(CONTEXT, len(text))
    return {"x": [text[i - CONTEXT : i] for i in ends], "y": [text[i] for i in ends]}


def write_leaf(root: Path) -> None:
    """``root/train/data.json`` and ``root/test/data.json`` in LEAF's format: users,
    num_samples and user_data[user] = {x, y}."""
    splits: dict[str, dict[str, dict[str, list[str]]]] = {"train": {}, "test": {}}
    for role, sonnet in SONNETS.items():
        text = " ".join(sonnet.split())
        cut = int(len(text) * (1 - TEST_SHARE))
        splits["train"][role] = samples(text[:cut])
        splits["test"][role] = samples(text[cut - CONTEXT :])  # contexts may reach back
    for split, users in splits.items():
        (root / split).mkdir(parents=True)
        doc = {
            "users": list(users),
            "num_samples": [len(data["y"]) for data in users.values()],
            "user_data": users,
        }
        (root / split / "data.json").write_text(json.dumps(doc), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        write_leaf(Path(tmp))
        config = {
            "rounds": 3 if args.quick else 10,
            "data": {"source": "shakespeare", "path": tmp},  # natural clients: the roles
            "model": {"kind": "char", "hidden": [64]},
            "server": {"clients_per_round": 4},
            # large batches, a large step: the GRU's cost is per step (a loop over the
            # 80 characters), hardly per example
            "client": {"local_epochs": 2, "lr": 4.0, "batch_size": 128},
            # what "auto" measures and picks for a recurrent model on a few CPU cores;
            # naming it skips the measurement
            "simulation": {"executor": "sequential"},
        }
        summary = fedloom.simulate(config, progress=False, in_memory=True)
    print(
        f"shakespeare_char: {summary.rounds} rounds, next-character accuracy "
        f"{summary.accuracy:.3f} (best {summary.best_value:.3f}), loss {summary.loss:.3f}"
    )


if __name__ == "__main__":
    main()
