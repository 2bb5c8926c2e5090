# Referee control: LayerNorm in every block and before the output (compose after an S−D config)
norm = 'layernorm'
