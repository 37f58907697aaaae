import pytest

from var_core import ConfigError, VARConfig, paper_defaults


def test_defaults_resolve_by_convention():
    paper = VARConfig()
    assert (paper.tau, paper.rho, paper.p, paper.summ, paper.first_layer) == (20.0, 0.5, 0.4, 0.2, 2)
    assert paper.except_last_layer is True and paper.kept_fraction == pytest.approx(0.6)
    official = VARConfig(convention="official")
    assert official.p == 0.6 and official.except_last_layer is False and official.kept_fraction == 0.6
    assert VARConfig(p=0.9, except_last_layer=False).p == 0.9  # explicit values win


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0.0}, "tau=0.0 is out of range: tau must be > 0"),
        ({"rho": 1.5}, "rho=1.5 is out of range: rho must be in [0, 1]"),
        ({"p": -0.1}, "p=-0.1 is out of range"),
        ({"summ": 2}, "summ=2 is out of range"),
        ({"first_layer": -1}, "first_layer=-1 is out of range"),
        ({"tau": float("nan")}, "tau=nan must be a finite number"),
        ({"convention": "released"}, "convention='released' is not one of paper, official"),
    ],
)
def test_out_of_range_fails_clearly(kwargs, message):
    with pytest.raises(ConfigError) as err:
        VARConfig(**kwargs)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_paper_defaults_convert_rho():
    assert paper_defaults("vision-centric").rho == 0.9
    official = paper_defaults("vision-centric", "official")
    assert official.rho == pytest.approx(0.1) and official.p == 0.6 and official.convention == "official"
    assert paper_defaults("hallucination", "official").rho == 0.5
    with pytest.raises(ConfigError, match="task group 'other'"):
        paper_defaults("other")
