"""Errors of the registry. Each subclasses a builtin (ValueError for bad
definitions, RuntimeError for a registry moved under our feet) so callers need
not import fstore to catch them; none knows about HTTP or the CLI."""
from __future__ import annotations

from fscore.errors import FStoreError


class RegistryError(FStoreError, ValueError):
    """Base of registry errors."""


class DslSyntaxError(RegistryError):
    """SQL DSL text that does not parse. Carries the 1-based line and column."""

    def __init__(self, message: str, line: int, column: int, source: str = "<sql>"):
        self.message, self.line, self.column, self.source = message, line, column, source
        super().__init__(f"{source}:{line}:{column}: {message}")


class DefinitionError(RegistryError):
    """Definitions that are well formed but wrong together (unknown column,
    type mismatch, missing feature...). `problems` lists every one found, so a
    user fixes them all in one go."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = "invalid definition" if len(self.problems) == 1 else f"{len(self.problems)} invalid definitions"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


class NotFoundError(RegistryError, LookupError):
    """A name or version the registry does not hold."""


class RegistryConflict(RegistryError, RuntimeError):
    """Another apply changed the registry between plan and apply."""


class IncompatibleChange(RegistryError):
    """An apply with incompatible changes that the caller did not allow."""


class RepoError(RegistryError):
    """A repository directory or fstore.yaml that cannot be used."""
