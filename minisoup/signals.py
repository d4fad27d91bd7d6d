"""GObject-style signals: ``connect(name, callback, *user_data)`` → id, ``disconnect(id)``."""

import itertools
import logging
import threading
from typing import Any, Callable, Dict, List, Tuple

log = logging.getLogger("minisoup")
_ids = itertools.count(1)


class _LastCallback(threading.local):
    """The user callback called last in this thread (a handler or a signal callback),
    recorded just before it runs, so that the loop's slow-callback warning can name it
    instead of the socket event that led to it. Per thread: a blocking client in another
    thread of the same process must not overwrite the server's record. One attribute
    store per call: cheap on purpose (it is on the message path)."""

    value: Any = None


last_callback = _LastCallback()


def check_signal(emitter: Any, name: str, callback: Any) -> None:
    """``ValueError`` unless ``name`` is one of ``emitter.SIGNALS``; ``TypeError`` unless
    ``callback`` is callable (what every ``connect`` checks first)."""
    if name not in emitter.SIGNALS:
        raise ValueError("%s has no signal %r (signals: %s)"
                         % (type(emitter).__name__, name, ", ".join(emitter.SIGNALS)))
    if not callable(callback):
        raise TypeError("callback must be callable")


def new_handler_id() -> int:
    """A fresh signal handler id, unique in the process (for emitters that keep their
    handlers in their own compact form, as ``websocket.WebsocketConnection``)."""
    return next(_ids)


class SignalEmitter:
    """Mixin giving an object libsoup's signal API.

    Subclasses list their signal names in ``SIGNALS``. A callback receives the
    emitting object first, then the signal's arguments, then its ``user_data``.
    An exception in a callback is logged and does not stop the other callbacks.
    """

    SIGNALS: Tuple[str, ...] = ()
    __slots__ = ()

    def _handlers_map(self) -> Dict[str, List[Tuple[int, Callable, tuple]]]:
        raise NotImplementedError

    def connect(self, name: str, callback: Callable[..., Any], *user_data: Any) -> int:
        """Call ``callback(self, *args, *user_data)`` on each emission of ``name``; returns an id."""
        check_signal(self, name, callback)
        handler_id = new_handler_id()
        self._handlers_map().setdefault(name, []).append((handler_id, callback, user_data))
        return handler_id

    def disconnect_signal(self, handler_id: int) -> None:
        """Remove the callback with this id (``KeyError`` if there is none)."""
        for handlers in self._handlers_map().values():
            for i, entry in enumerate(handlers):
                if entry[0] == handler_id:
                    del handlers[i]
                    return
        raise KeyError("no signal handler with id %r" % handler_id)

    def emit(self, name: str, *args: Any) -> None:
        """Call every callback connected to ``name``."""
        handlers = self._handlers_map().get(name)
        if not handlers:
            return
        for _id, callback, user_data in list(handlers):
            last_callback.value = callback
            try:
                callback(self, *args, *user_data)
            except Exception as exc:
                log.exception("exception in %r signal handler %r", name, callback)
                self._signal_callback_failed(name, exc)

    def _signal_callback_failed(self, name: str, exc: Exception) -> None:
        """Hook: what the object does after a callback raised (default: nothing more)."""
