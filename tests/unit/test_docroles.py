"""The docs site's griffe extension writes reST roles as inline code."""

from __future__ import annotations

from consumer.dev.docroles import plain_roles


def test_a_tilde_role_shows_the_last_part_and_a_plain_one_the_whole_path() -> None:
    text = "raise :class:`~schemas.errors.ValidationError`, see :meth:`Codec.resolve`"
    assert plain_roles(text) == "raise `ValidationError`, see `Codec.resolve`"


def test_text_without_roles_and_double_backticks_are_left_alone() -> None:
    text = "Use ``async with`` or start(); a :colon: is not a role"
    assert plain_roles(text) == text
