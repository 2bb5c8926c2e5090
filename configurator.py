"""
Config overrides for train.py and sample.py, nanoGPT style but checked:
    python train.py config/quick_sd.py config/deep.py config/hybrid_third.py --seed=2 --attn="['linear','sd','sd']"
A config file is Python that assigns some of the script's globals and sees the values set before it, so files
compose. `--key=value` is parsed with ast.literal_eval (a bare word stays a string). Unknown keys and wrong types
are one-line errors.
"""
import ast
import sys


def _check(key, value, defaults, source):
    if key not in defaults:
        valid = ', '.join(sorted(k for k in defaults if not k.startswith('_')))
        raise SystemExit(f"error: unknown config key '{key}' in {source}; valid keys: {valid}")
    default = defaults[key]
    if default is None or value is None or isinstance(default, (list, tuple)) or isinstance(value, (list, tuple)):
        return value  # per-layer knobs: a single value or a list; the model config validates them
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if type(value) is not type(default):
        raise SystemExit(f"error: {key} expects {type(default).__name__} (like {default!r}), "
                         f"got {type(value).__name__} {value!r} from {source}")
    return value


def configure(defaults, argv=None):
    """Apply the config files and --key=value overrides of `argv` (default: sys.argv[1:]) to the dict `defaults`;
    returns the dict of what was set."""
    overrides = {}
    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise SystemExit(f"error: expected --key=value, got {arg}")
            try:
                value = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                value = text
            defaults[key] = overrides[key] = _check(key, value, defaults, arg)
            continue
        try:
            with open(arg) as f:
                code = f.read()
        except OSError as e:
            raise SystemExit(f"error: cannot read config file {arg}: {e.strerror}; give the path of a config file "
                             f"(like config/quick_sd.py) or --key=value")
        scope = dict(defaults)
        try:
            exec(compile(code, arg, 'exec'), scope)
        except Exception as e:
            raise SystemExit(f"error: config file {arg} failed: {type(e).__name__}: {e}")
        for key, value in scope.items():   # what the file assigned (not a helper, module or function)
            if (key not in defaults or value is not defaults[key]) and not key.startswith('_') \
                    and not callable(value) and type(value).__name__ != 'module':
                defaults[key] = overrides[key] = _check(key, value, defaults, arg)
    return overrides
