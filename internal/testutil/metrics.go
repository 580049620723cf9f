package testutil

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// MetricSamples parses a Prometheus text exposition (what /metrics
// answers) and returns the value of each of its samples, a histogram's
// _bucket, _sum and _count included. A sample is keyed as the text format
// writes it: the bare name, or the name and its labels in ascending order,
// `name{code="200",method="GET"}`. It fails tb when the exposition does not
// parse.
func MetricSamples(tb testing.TB, exposition string) map[string]float64 {
	tb.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(exposition))
	if err != nil {
		tb.Fatalf("testutil: parsing the metrics exposition: %v", err)
	}
	vector, err := expfmt.ExtractSamples(&expfmt.DecodeOptions{Timestamp: model.Now()}, slices.Collect(maps.Values(families))...)
	if err != nil {
		tb.Fatalf("testutil: reading the samples of the metrics exposition: %v", err)
	}
	samples := make(map[string]float64, len(vector))
	for _, s := range vector {
		samples[sampleKey(s.Metric)] = float64(s.Value)
	}
	return samples
}

// sampleKey writes m as the text exposition format does.
func sampleKey(m model.Metric) string {
	var labels []string
	for name, value := range m {
		if name != model.MetricNameLabel {
			labels = append(labels, string(name)+"="+strconv.Quote(string(value)))
		}
	}
	name := string(m[model.MetricNameLabel])
	if len(labels) == 0 {
		return name
	}
	slices.Sort(labels)
	return name + "{" + strings.Join(labels, ",") + "}"
}

// LintMetrics lints a Prometheus text exposition with promlint, and reports
// every problem as an error of tb.
func LintMetrics(tb testing.TB, exposition string) {
	tb.Helper()
	problems, err := promlint.New(strings.NewReader(exposition)).Lint()
	if err != nil {
		tb.Fatalf("testutil: linting the metrics exposition: %v", err)
	}
	for _, p := range problems {
		tb.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
