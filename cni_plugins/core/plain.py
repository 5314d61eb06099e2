"""`@plain`: what we use of @dataclass, without its import cost.

dataclasses imports inspect and ast: about 7 ms on every container start,
a third of an ADD's budget.  This builds the same keyword/positional
__init__ from the class annotations, with class-level defaults (a list or
dict default is copied per instance), plus __repr__ and __eq__.
"""

_MUTABLE = (list, dict, set)


def plain(cls):
    names = [n for c in reversed(cls.__mro__) for n in getattr(c, "__annotations__", {})]
    names = list(dict.fromkeys(names))

    def __init__(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional arguments")
        kwargs.update(zip(names, args))
        for name in names:
            if name in kwargs:
                value = kwargs.pop(name)
            elif hasattr(cls, name):
                value = getattr(cls, name)
                if isinstance(value, _MUTABLE):
                    value = type(value)(value)
            else:
                raise TypeError(f"{cls.__name__}() missing argument {name!r}")
            setattr(self, name, value)
        if kwargs:
            raise TypeError(f"{cls.__name__}() got unexpected arguments {sorted(kwargs)}")

    def __repr__(self):
        return f"{cls.__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    cls.__init__, cls.__repr__, cls.__eq__ = __init__, __repr__, __eq__
    cls.__hash__ = None
    return cls


def replace(obj, **changes):
    """A copy of a @plain object with some fields changed."""
    names = [n for c in reversed(type(obj).__mro__) for n in getattr(c, "__annotations__", {})]
    return type(obj)(**{n: changes.get(n, getattr(obj, n)) for n in dict.fromkeys(names)})
