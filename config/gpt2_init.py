# Variant: without LayerNorm, GPT-2's initialisation as it is (no sqrt(n_embd) embedding multiplier)
emb_scale, out_dir = 1.0, out_dir + '_gpt2init'
