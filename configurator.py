"""
Config overrides for the scripts, nanoGPT style but checked:
    python train.py config/sd_125m.py --batch_size=32 --attn="['linear','sd','sd']"
    python train.py config/quick_sd.py config/deep.py config/hybrid_third.py --seed=2    # files compose
A config file is Python that assigns some of the script's globals; it sees the values set so far (so a
variant file can build on them, e.g. `attn = ['linear'] * (n_layer // 3) + ...`). `--key=value` is parsed
with ast.literal_eval (a bare word stays a string). Unknown keys and wrong types are one-line errors.
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
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise SystemExit(f"error: {key} expects {type(default).__name__} (like {default!r}), "
                         f"got {type(value).__name__} {value!r} from {source}")
    return value


def configure(defaults, argv=None):
    """Apply config files and --key=value overrides in `argv` to the dict `defaults` (a script's
    globals()); returns the dict of keys that were set."""
    overrides = {}
    for arg in sys.argv[1:] if argv is None else argv:
        if not arg.startswith('--'):
            try:
                with open(arg) as f:
                    code = f.read()
            except OSError as e:
                raise SystemExit(f"error: cannot read config file {arg}: {e.strerror}; give the path of a config "
                                 f"file (like config/quick_sd.py) or --key=value")
            scope = dict(defaults)
            try:
                exec(compile(code, arg, 'exec'), scope)
            except Exception as e:
                raise SystemExit(f"error: config file {arg} failed: {type(e).__name__}: {e}")
            for key, value in scope.items():
                if key in defaults and value is defaults[key]:
                    continue   # not assigned by this file
                if not key.startswith('_') and not callable(value) and type(value).__name__ != 'module':
                    overrides[key] = _check(key, value, defaults, arg)
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise SystemExit(f"error: expected --key=value, got {arg}")
            try:
                value = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                value = text
            overrides[key] = _check(key, value, defaults, arg)
        defaults.update(overrides)
    return overrides
