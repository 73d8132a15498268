"""Commands: the eight base classes and the registry of commands and API handlers.

A command's request type comes from its generic parameter (``AsyncCommand[SendEmail]``) and is
used to load the stored request back. ``SyncCommand*`` classes run in a worker thread.

=============================  ==========  ========  ========
class                          async/sync  request   result
=============================  ==========  ========  ========
AsyncCommand[Req]              async       yes       no
AsyncCommandWithResult[Req,R]  async       yes       yes
AsyncNoRequestCommand          async       no        no
AsyncNoRequestCommandWithResult[R] async   no        yes
SyncCommand[Req]               sync        yes       no
SyncCommandWithResult[Req,R]   sync        yes       yes
SyncNoRequestCommand           sync        no        no
SyncNoRequestCommandWithResult[R]  sync    no        yes
=============================  ==========  ========  ========
"""

from __future__ import annotations

import abc
import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Generic, TypeVar

from ._serialization import type_name
from .exceptions import InvalidOptionsError, RegistrationError
from .models import check_name

Req = TypeVar("Req")
Res = TypeVar("Res")


class _Command(abc.ABC):
    """Shared class-level facts about a command shape; subclasses implement ``run``."""

    #: run every job of this command on this named (serial) worker
    worker: ClassVar[str | None] = None
    _is_async: ClassVar[bool]
    _has_request: ClassVar[bool]


class AsyncCommand(_Command, Generic[Req]):
    _is_async = True
    _has_request = True

    @abc.abstractmethod
    async def run(self, request: Req) -> None:
        """Do the work with the request."""


class AsyncCommandWithResult(_Command, Generic[Req, Res]):
    _is_async = True
    _has_request = True

    @abc.abstractmethod
    async def run(self, request: Req) -> Res:
        """Do the work with the request."""


class AsyncNoRequestCommand(_Command):
    _is_async = True
    _has_request = False

    @abc.abstractmethod
    async def run(self) -> None:
        """Do the work."""


class AsyncNoRequestCommandWithResult(_Command, Generic[Res]):
    _is_async = True
    _has_request = False

    @abc.abstractmethod
    async def run(self) -> Res:
        """Do the work."""


class SyncCommand(_Command, Generic[Req]):
    _is_async = False
    _has_request = True

    @abc.abstractmethod
    def run(self, request: Req) -> None:
        """Do the work with the request."""


class SyncCommandWithResult(_Command, Generic[Req, Res]):
    _is_async = False
    _has_request = True

    @abc.abstractmethod
    def run(self, request: Req) -> Res:
        """Do the work with the request."""


class SyncNoRequestCommand(_Command):
    _is_async = False
    _has_request = False

    @abc.abstractmethod
    def run(self) -> None:
        """Do the work."""


class SyncNoRequestCommandWithResult(_Command, Generic[Res]):
    _is_async = False
    _has_request = False

    @abc.abstractmethod
    def run(self) -> Res:
        """Do the work."""


_NO_RESULT_BASES = (AsyncCommand, AsyncNoRequestCommand, SyncCommand, SyncNoRequestCommand)
_BASES: tuple[type, ...] = (
    AsyncCommand, AsyncCommandWithResult, AsyncNoRequestCommand, AsyncNoRequestCommandWithResult,
    SyncCommand, SyncCommandWithResult, SyncNoRequestCommand, SyncNoRequestCommandWithResult,
)  # fmt: skip

ApiHandler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """What the runtime needs to know to run a command class."""

    name: str
    cls: type[Any]
    request_type: Any  # None for commands without a request
    is_async: bool
    worker: str | None


@dataclass(frozen=True, slots=True)
class ApiInfo:
    """An API handler: runs for requests of one type."""

    request_type: type[Any]
    handler: ApiHandler


def _request_type(cls: type[Any]) -> Any:
    """The ``Req`` of ``class X(AsyncCommand[Req])``, found through any intermediate bases."""
    if not cls._has_request:
        return None
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if origin in _BASES:
                arg = typing.get_args(base)[0]
                if isinstance(arg, TypeVar):
                    break
                return arg
    raise RegistrationError(
        f"{cls.__name__} must name its request type, e.g. class {cls.__name__}"
        f"(AsyncCommand[MyRequest])"
    )


#: the result of a command that returns none (``result_type``)
NO_RESULT: Any = object()


def result_type(cls: type[Any]) -> Any:
    """The ``Res`` of ``class X(AsyncCommandWithResult[Req, Res])`` (and of the other shapes
    with a result), NO_RESULT for a command without one, None when it cannot be told."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if origin in (AsyncCommandWithResult, SyncCommandWithResult):
                arg = typing.get_args(base)[1]
            elif origin in (AsyncNoRequestCommandWithResult, SyncNoRequestCommandWithResult):
                arg = typing.get_args(base)[0]
            elif origin in _BASES or base in _BASES:
                return NO_RESULT
            else:
                continue
            return None if isinstance(arg, TypeVar) else arg
    return NO_RESULT if issubclass(cls, _NO_RESULT_BASES) else None


def command_info(cls: type[Any]) -> CommandInfo:
    if not (isinstance(cls, type) and issubclass(cls, _Command)) or cls in _BASES:
        raise RegistrationError(f"{cls!r} is not a command class (subclass AsyncCommand & co.)")
    if inspect.isabstract(cls):
        raise RegistrationError(f"{cls.__name__} does not implement run()")
    if cls.worker is not None:
        try:
            check_name("worker", cls.worker)
        except InvalidOptionsError as exc:
            raise RegistrationError(f"{cls.__name__}.worker: {exc}") from None
    return CommandInfo(cls.__name__, cls, _request_type(cls), cls._is_async, cls.worker)


class Registry:
    """Commands by name, API handlers and request types by type name."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandInfo] = {}
        self.apis: dict[str, ApiInfo] = {}
        self.request_types: dict[str, Any] = {}

    def add_command(self, cls: type[Any]) -> CommandInfo:
        info = command_info(cls)
        existing = self.commands.get(info.name)
        if existing is not None and existing.cls is not cls:
            raise RegistrationError(
                f"two commands are named {info.name}: {existing.cls.__module__} and "
                f"{cls.__module__}"
            )
        self.commands[info.name] = info
        if info.request_type is not None:
            self._add_request_type(info.request_type)
        return info

    def add_module(self, module: ModuleType) -> None:
        """Register every command class defined in a module."""
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, _Command)
                and value not in _BASES
                and value.__module__ == module.__name__
                and not inspect.isabstract(value)
            ):
                self.add_command(value)

    def add_api(self, request_type: type[Any], handler: ApiHandler) -> None:
        if not isinstance(request_type, type):
            raise RegistrationError(
                f"an API is registered for a request class, not {request_type!r}"
            )
        if not callable(handler):
            raise RegistrationError(f"the API handler for {request_type.__name__} is not callable")
        self.apis[type_name(request_type)] = ApiInfo(request_type, handler)
        self._add_request_type(request_type)

    def _add_request_type(self, tp: Any) -> None:
        name = type_name(tp)
        existing = self.request_types.get(name)
        if existing is not None and existing is not tp:
            raise RegistrationError(f"two request types are named {name}")
        self.request_types[name] = tp

    def command(self, name_or_cls: str | type[Any]) -> CommandInfo:
        if not isinstance(name_or_cls, str | type):
            raise RegistrationError(
                f"a command is a command class or its name, not {type(name_or_cls).__name__}"
            )
        name = name_or_cls if isinstance(name_or_cls, str) else name_or_cls.__name__
        info = self.commands.get(name)
        if info is None:
            if isinstance(name_or_cls, type) and issubclass(name_or_cls, _Command):
                return self.add_command(name_or_cls)
            known = ", ".join(sorted(self.commands)) or "none"
            raise RegistrationError(f"unknown command {name!r}; registered commands: {known}")
        return info

    def api(self, request_type_name: str) -> ApiInfo:
        info = self.apis.get(request_type_name)
        if info is None:
            raise RegistrationError(
                f"no API is registered for request type {request_type_name!r}; "
                "use jobs.register_api(RequestType, handler)"
            )
        return info

    def request_type(self, name: str) -> Any:
        tp = self.request_types.get(name)
        if tp is None:
            raise RegistrationError(f"unknown request type {name!r}")
        return tp


def instantiate(cls: type[Any], services: Mapping[type[Any], Any]) -> Any:
    """Create a command, passing constructor arguments from ``services`` by type annotation."""
    return cls(**constructor_args(cls, services))


def constructor_args(cls: type[Any], services: Mapping[type[Any], Any]) -> dict[str, Any]:
    """The services a command's constructor takes, by type annotation (an optional one,
    ``Mailer | None``, gets the service when there is one); `RegistrationError` if one it needs
    is missing."""
    init = cls.__init__
    if init is object.__init__:
        return {}
    try:
        hints = typing.get_type_hints(init)
    except Exception as exc:
        raise RegistrationError(
            f"cannot read the constructor types of {cls.__name__}: {exc}"
        ) from exc
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(init).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        wanted = hints.get(name)
        candidates = (wanted,)
        if typing.get_origin(wanted) in (typing.Union, types.UnionType):
            candidates = tuple(t for t in typing.get_args(wanted) if t is not type(None))
        found = [t for t in candidates if t is not None and t in services]
        if found:
            kwargs[name] = services[found[0]]
        elif param.default is param.empty:
            raise RegistrationError(
                f"{cls.__name__} needs a {type_name(wanted)} for {name!r}; pass it in "
                f"BackgroundJobs(services={{{type_name(wanted)}: ...}})"
            )
    return kwargs
