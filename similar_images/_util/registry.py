"""A registry of named specs, the shape shared by the image models and the text encoders.

:mod:`similar_images.embed.image_models` keeps the
:class:`~similar_images.embed.image_models.ModelSpec` registry and
:mod:`similar_images.embed.text` the
:class:`~similar_images.embed.text.TextEncoderSpec` one; each is a
:class:`Registry` behind the module's public functions (``register_model``,
``get_model_spec``, ``available_models``, and their text twins).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from ..errors import ConfigError

__all__ = ["Named", "Registry"]


class Named(Protocol):
    """Anything with a registry name (a frozen dataclass with a ``name`` field qualifies)."""

    @property
    def name(self) -> str: ...


SpecT = TypeVar("SpecT", bound=Named)


class Registry(Generic[SpecT]):
    """Specs by name, with a duplicate check and errors that list the choices.

    Args:
        kind: What a spec is, for messages: ``"model"``, ``"text encoder"``.
        hint: Added in brackets to the unknown-name error, e.g. how to
            register one's own spec.

    Example:
        >>> from collections import namedtuple
        >>> Spec = namedtuple("Spec", "name dim")
        >>> models = Registry("model")
        >>> models.register(Spec("tiny", 16))
        >>> models.get("tiny").dim
        16
        >>> models.get("huge")
        Traceback (most recent call last):
        ...
        similar_images.errors.ConfigError: Unknown model 'huge'; choose one of: tiny
    """

    def __init__(self, kind: str, *, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._specs: dict[str, SpecT] = {}

    def register(self, spec: SpecT, *, replace: bool = False) -> None:
        """Add ``spec`` under ``spec.name``.

        Raises:
            ConfigError: If the name is taken and ``replace`` is false.
        """
        if spec.name in self._specs and not replace:
            raise ConfigError(
                f"A {self.kind} named {spec.name!r} is already registered; pass replace=True to override it"
            )
        self._specs[spec.name] = spec

    def get(self, name: str) -> SpecT:
        """The spec registered as ``name``.

        Raises:
            ConfigError: If no spec has that name (the message lists the choices).
        """
        try:
            return self._specs[name]
        except KeyError:
            hint = f" ({self.hint})" if self.hint else ""
            raise ConfigError(
                f"Unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{hint}"
            ) from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)
