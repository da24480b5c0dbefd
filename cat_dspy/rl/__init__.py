"""CaT-RL: the reward options (``config``), the TRL reward (``reward``), its inputs, callbacks and distributed
gather, and the GRPO training entry (``train``).
"""
