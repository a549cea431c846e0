"""Entity IDs: a name and a key, `@name@key` on the wire (as the Durable Task SDKs write them)."""

from __future__ import annotations

from ..errors import InvalidInput
from ..instance_ids import MAX_ID_LENGTH, has_control_characters


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:40] + "...")


class EntityId:
    """Identifies one entity. Names are case-insensitive (kept lowercase, as the SDKs do); keys
    are kept as given. IDs order by their string form: the global order locks are taken in."""

    __slots__ = ("key", "name")

    def __init__(self, name: str, key: str) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidInput("entity name must be a non-empty string")
        if "@" in name:
            raise InvalidInput(f"entity name {name!r} must not contain '@'")
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"entity key of {name!r} must be a non-empty string")
        for part in (name, key):
            if has_control_characters(part):
                raise InvalidInput(f"entity ID part {part!r} contains control characters")
        self.name = name.lower()
        self.key = key
        length = len(self.name) + len(key) + 2
        if length > MAX_ID_LENGTH:
            raise InvalidInput(
                f"entity ID {_shown(str(self))} is {length} characters long; "
                f"the limit is {MAX_ID_LENGTH}"
            )

    @classmethod
    def parse(cls, text: str) -> EntityId:
        """`@name@key` (the key may itself contain '@')."""
        if not isinstance(text, str) or not text.startswith("@") or text.count("@") < 2:
            raise InvalidInput(f"{text!r} is not an entity ID; entity IDs look like '@name@key'")
        _, name, key = text.split("@", 2)
        return cls(name, key)

    @classmethod
    def stored(cls, text: str) -> EntityId:
        """An ID read back from the store, taken as it is: it was checked when it was written,
        and a rule added since must not make an entity already stored unreadable."""
        entity = cls.__new__(cls)
        _, entity.name, entity.key = text.split("@", 2)
        return entity

    @classmethod
    def of(cls, value: EntityId | str) -> EntityId:
        return value if isinstance(value, EntityId) else cls.parse(value)

    def __str__(self) -> str:
        return f"@{self.name}@{self.key}"

    def __repr__(self) -> str:
        return f"EntityId({self.name!r}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntityId) and (self.name, self.key) == (other.name, other.key)

    def __hash__(self) -> int:
        return hash((self.name, self.key))

    def __lt__(self, other: EntityId) -> bool:
        return str(self) < str(other)


def id_prefix(prefix: str) -> str:
    """An ID prefix as stored: the name part lowercased, as names are case-insensitive, and
    the key part as given."""
    if len(prefix) > MAX_ID_LENGTH:
        raise InvalidInput(
            f"entity ID prefix {_shown(prefix)} is {len(prefix)} characters long; "
            f"no entity ID is longer than {MAX_ID_LENGTH}"
        )
    if has_control_characters(prefix):
        raise InvalidInput(f"entity ID prefix {prefix!r} contains control characters")
    if not prefix.startswith("@"):
        return prefix
    name, at, key = prefix[1:].partition("@")
    return f"@{name.lower()}{at}{key}"
