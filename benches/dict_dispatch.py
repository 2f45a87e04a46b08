"""The dict-dispatch reference moved to `catga/_bench/_reference.py`, where `catga bench` uses it
too; this name stays for the links that point here (README.md)."""

from catga._bench._reference import Behaviour, DictMediator, Handler, compose

__all__ = ["Behaviour", "DictMediator", "Handler", "compose"]
