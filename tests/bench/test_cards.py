"""The method cards' option tables and ``sievetrain methods`` come from the options
dataclasses: a card that is not current fails here."""

from pathlib import Path

import pytest

from sievetrain.bench import REGISTRY
from sievetrain.bench.cards import BEGIN, END, card_block, methods_listing, write_cards

CARDS = Path(__file__).resolve().parents[2] / "docs" / "methods"


@pytest.mark.parametrize("card", sorted({m.card for m in REGISTRY.values() if m.card}))
def test_every_card_holds_its_current_generated_option_table(card):
    text = (CARDS / f"{card}.md").read_text()
    assert card_block(card) in text, (
        f"docs/methods/{card}.md is stale: run `sievetrain methods --write-cards docs/methods`"
    )


def test_the_listing_shows_every_option_of_every_method_with_its_default():
    listing = methods_listing()
    for method in REGISTRY.values():
        assert f"| {method.name} | {method.level} |" in listing
        for info in method.options.describe():
            if info.name in method.exposed:
                assert f"`{info.name}`" in listing and info.meaning in listing


def test_write_cards_rewrites_only_the_generated_block(tmp_path):
    card = tmp_path / "sift.md"
    card.write_text(f"# SIFT\n\nprose before\n\n{BEGIN}\nold table\n{END}\n\nprose after\n")
    (tmp_path / "notes.md").write_text("no block here\n")
    assert write_cards(tmp_path) == [card]
    text = card.read_text()
    assert text.startswith("# SIFT\n\nprose before\n\n") and text.endswith("\n\nprose after\n")
    assert card_block("sift") in text and "old table" not in text
    assert write_cards(tmp_path) == []  # current now
    assert (tmp_path / "notes.md").read_text() == "no block here\n"
