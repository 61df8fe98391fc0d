"""Type errors of any option are one `error:` line naming the option, what it accepts and what it got."""

import pytest

from lit_vit.cli import main
from lit_vit.cli_parser import condense
from lit_vit.models.layers import POS_EMBED_KINDS

BB = "--model.init_args.backbone.init_args"


@pytest.mark.parametrize(
    "arg,expected",
    [
        (
            f"{BB}.pos_embed=rope3",
            f"error: --model.backbone.pos_embed: expected one of {', '.join(POS_EMBED_KINDS)}; got 'rope3' "
            "(see --help)",
        ),
        ("--data.init_args.batch_size=1.5", "error: --data.batch_size: expected int; got '1.5' (see --help)"),
        ("--trainer.max_epochs=abc", "error: --trainer.max_epochs: expected int or null; got 'abc' (see --help)"),
        (f"{BB}.img_size=x", "error: --model.backbone.img_size: expected int or tuple; got 'x' (see --help)"),
        (
            f"{BB}.pretrained=/nope.pth",
            "error: --model.backbone: VisionTransformer has no option 'pretrained'; see --model.backbone.help "
            "lit_vit.models.VisionTransformer for its options",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_one_error_line(arg, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config=experiments/ablation_pos.yaml", arg, f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [expected]
    assert not list(tmp_path.iterdir())  # stopped before anything was written


def test_condense_keeps_an_unknown_message_whole_on_one_line():
    assert condense("Unrecognized arguments:\n  --nonsense 3") == "Unrecognized arguments: --nonsense 3"
