"""Embedding models (task: embed): a decoder's final hidden state at each input's last token,
L2-normalised, read in batches on the model's own thread. No generation loop runs for them."""
