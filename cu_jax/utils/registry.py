"""A tiny name -> object registry used for models, datasets, optimizers, stages and methods."""

from typing import Callable, Generic, Iterator, TypeVar

from cu_jax.utils.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects; looking up an unknown name lists the valid ones."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def deco(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj
    return deco

  def get(self, name: str, config_key: str | None = None) -> T:
    if name not in self._items:
      where = f" (set --config.{config_key}=...)" if config_key else ""
      raise UserError(f"unknown {self.kind} {name!r}{where}; valid: {', '.join(sorted(self._items))}")
    return self._items[name]

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def names(self) -> list[str]:
    return list(self._items)
