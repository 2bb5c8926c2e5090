# Variant (referee control): no LayerNorm anywhere, e.g. config/quick_sd.py config/std.py config/nonorm.py
norm, out_dir = 'none', out_dir + '_nonorm'
