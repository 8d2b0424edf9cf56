"""The CPU benchmark measures the three implementations and prints one comparable table."""


def test_measure_and_table_on_a_small_shape(bench_cpu, capsys):
    result = bench_cpu.measure((8, 4, 3, 3), repeats=2)
    names = [row["implementation"].split()[0] for row in result["rows"]]
    assert names == ["textbook", "bnlib.numpy", "torch"]
    assert result["copy_ms"] > 0 and result["copy_into_existing_ms"] > 0
    assert result["shape"] == [8, 4, 3, 3]
    bench_cpu.print_table(result)
    lines = capsys.readouterr().out.splitlines()
    assert f"{result['copy_into_existing_ms']:.2f} ms into an existing array" in lines[1]
    assert "vs torch" in lines[2] and "vs textbook" in lines[2]
    # each row's ratio to the torch row and to the textbook row, as printed
    torch_row, textbook_row = result["rows"][2], result["rows"][0]
    for row, line in zip(result["rows"], lines[3:], strict=True):
        assert line.startswith(row["implementation"])
        assert f"{row['total_ms'] / torch_row['total_ms']:.2f}x" in line
        assert f"{textbook_row['total_ms'] / row['total_ms']:.2f}x faster" in line
