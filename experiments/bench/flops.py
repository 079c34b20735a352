"""Floating-point operations of the DeviNet family, counted from the architecture."""

from __future__ import annotations


def forward_flops(config, frames: int) -> dict[str, int]:
    """Floating-point operations of one clip's forward pass, counted from the architecture.

    A multiply-add counts 2. Counted: every convolution (``2 k^2 C_in C_out T F`` at its
    output size, 'same' padding), the GRUs (per GRU, direction and step: the input
    projection ``2 * 3H * I`` and the recurrent matmuls ``2 * 3H * H``) and the dense layers
    (``2 * in * out`` per frame). Not counted: BatchNorm, GLU, pooling, activations and gate
    arithmetic (elementwise, a few FLOPs per value), so the figure slightly undercounts.

    Args:
        config: a :class:`devinet.config.DeviNetConfig`.
        frames: input frames T of the (T, n_mels) clip.

    Returns:
        ``{"conv", "gru", "dense", "total"}`` FLOPs per clip.
    """
    k2 = config.kernel_size ** 2
    block_out = 2 * config.conv_channels if config.gated_conv else config.conv_channels
    t, f, channels = frames, config.n_mels, 1
    conv = 0
    for n_blocks, (pool_t, pool_f) in zip(config.conv_groups, config.pools):
        for _ in range(n_blocks):
            conv += 2 * k2 * channels * block_out * t * f
            channels = config.conv_channels
        t, f = t // pool_t, f // pool_f
    if config.final_conv_channels:
        conv += 2 * k2 * channels * config.final_conv_channels * t * f
        channels = config.final_conv_channels
    t = t // config.final_pool[0]
    grus_per_layer = 2 if config.gated_rnn else 1
    gru = 0
    for hidden in config.rnn_hidden:
        gru += grus_per_layer * 2 * t * 2 * 3 * hidden * (channels + hidden)
        channels = 2 * hidden
    dense = 0
    for size in config.linear_layers:
        dense += 2 * t * channels * size
        channels = size
    dense += 2 * t * channels * config.num_classes
    if config.head == "attention":
        dense += 2 * t * config.num_classes * config.num_classes
    return {"conv": conv, "gru": gru, "dense": dense, "total": conv + gru + dense}
