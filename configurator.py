"""Config files (Python that sees the values set before it) and --key=value (ast.literal_eval; a bare word
stays a string) for train.py and sample.py; unknown keys and wrong types are one-line errors."""
import ast
import sys


def configure(defaults, argv=None):
    """Apply config files and --key=value of argv (default: sys.argv[1:]) to defaults; return what is set."""
    overrides = {}
    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise SystemExit(f"error: expected --key=value, got {arg}")
            try:
                assigned = {key: ast.literal_eval(text)}
            except (SyntaxError, ValueError):
                assigned = {key: text}
        else:
            scope = dict(defaults)
            try:
                with open(arg) as f:
                    exec(compile(f.read(), arg, 'exec'), scope)
            except OSError as e:
                raise SystemExit(f"error: cannot read config file {arg}: {e.strerror}; give the path of a "
                                 f"config file (like config/quick_sd.py) or --key=value")
            except Exception as e:
                raise SystemExit(f"error: config file {arg} failed: {type(e).__name__}: {e}")
            assigned = {k: v for k, v in scope.items() if (k not in defaults or v is not defaults[k])
                        and not k.startswith('_') and not callable(v) and type(v).__name__ != 'module'}
        for key, value in assigned.items():
            if key not in defaults:
                valid = ', '.join(sorted(k for k in defaults if not k.startswith('_')))
                raise SystemExit(f"error: unknown config key '{key}' in {arg}; valid keys: {valid}")
            default = defaults[key]
            if isinstance(default, float) and type(value) is int:
                value = float(value)
            elif (type(value) is not type(default) and None not in (default, value)   # lists: per layer
                  and not isinstance(default, list) and not isinstance(value, (list, tuple))):
                raise SystemExit(f"error: {key} expects {type(default).__name__} (like {default!r}), "
                                 f"got {type(value).__name__} {value!r} from {arg}")
            defaults[key] = overrides[key] = value
    return overrides
