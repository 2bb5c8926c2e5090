# Referee control: no LayerNorm anywhere (compose after a standard-attention config)
norm = 'none'
