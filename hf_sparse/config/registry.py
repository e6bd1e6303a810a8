"""Open registries of algorithms and regularizers, keyed by name.

A config names its algorithm or regularizer by string; the name is checked against the registry when the config is
built, so a user's own class, once registered, is accepted everywhere a built-in is (configs, `SparseTrainer`, the
recipes' ``--dynamic.algorithm``). The config layer sits below the classes it names, so it never imports them:
the built-in classes are loaded by module name on the first lookup (as a plugin would be), after which user
registrations and built-ins live side by side.

Example:
    >>> @hf_sparse.register_algorithm
    ... class MyRegrowth(hf_sparse.algorithms.DynSparseAlgorithm):
    ...     name = "my_regrowth"
    >>> hf_sparse.DynamicSparsityConfig(algorithm="my_regrowth")
"""

from __future__ import annotations

import importlib
from typing import Dict, Generic, Tuple, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by their ``name`` attribute, with the built-ins loaded from ``builtin_module`` on first use.

    Args:
        kind: What is registered (``"algorithm"``), for messages.
        builtin_module: Module whose import registers the built-in classes.
    """

    def __init__(self, kind: str, builtin_module: str):
        self.kind = kind
        self.builtin_module = builtin_module
        self._classes: Dict[str, Type[T]] = {}
        self._loaded = False

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the import below registers into this registry
            importlib.import_module(self.builtin_module)

    def register(self, cls: Type[T]) -> Type[T]:
        """Registers ``cls`` under ``cls.name`` (use as a class decorator); returns ``cls``.

        Raises:
            ValueError: when ``cls`` has no ``name`` or another class is registered under it.
        """
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{cls.__name__} needs a non-empty string `name` to be registered as an {self.kind}.")
        self._load_builtins()
        if name in self._classes and self._classes[name] is not cls:
            # Re-running a notebook cell redefines the class: the same qualified name replaces the old one.
            old = self._classes[name]
            if (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(f"An {self.kind} named {name!r} is already registered ({old.__qualname__}).")
        self._classes[name] = cls
        return cls

    def get(self, name: str) -> Type[T]:
        """The class registered as ``name``.

        Raises:
            ValueError: naming the registered classes when ``name`` is unknown.
        """
        self._load_builtins()
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"{self.kind}={name!r} is not registered; choose one of {', '.join(map(repr, self.names()))} "
                f"or register your own with @hf_sparse.register_{self.kind}."
            ) from None

    def names(self) -> Tuple[str, ...]:
        """The registered names, built-ins first, in registration order."""
        self._load_builtins()
        return tuple(self._classes)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._classes

    # Read-only mapping behaviour, so ``set(REGISTRY)`` / ``REGISTRY[name]`` work as with a plain dict.
    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> Type[T]:
        self._load_builtins()
        return self._classes[name]

    def items(self):
        """``(name, class)`` pairs."""
        self._load_builtins()
        return tuple(self._classes.items())


#: Mask-update algorithms (`hf_sparse.algorithms`).
ALGORITHM_REGISTRY: "Registry" = Registry("algorithm", "hf_sparse.algorithms")
#: Sparsifying regularizers (`hf_sparse.regularizers`).
REGULARIZER_REGISTRY: "Registry" = Registry("regularizer", "hf_sparse.regularizers")
