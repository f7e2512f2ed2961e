package images

import (
	"fmt"
	"os"
	"path/filepath"

	"go.yaml.in/yaml/v3"
)

// ChartDir is the chart's directory relative to the repository root.
const ChartDir = "charts/prometheus-metrics-proxy-hook"

// Chart holds what the images take from the chart: the references its
// defaults pull.
type Chart struct {
	AppVersion      string
	ImageRepository string
	RedisRepository string
	RedisTag        string
}

// RedisRef is the Redis image the chart's defaults name.
func (c Chart) RedisRef() string { return c.RedisRepository + ":" + c.RedisTag }

// ReadChart reads Chart.yaml and values.yaml of the chart in the checkout at
// root.
func ReadChart(root string) (Chart, error) {
	var meta struct {
		AppVersion string `yaml:"appVersion"`
	}
	var values struct {
		Image struct {
			Repository string `yaml:"repository"`
		} `yaml:"image"`
		Redis struct {
			Image struct {
				Repository string `yaml:"repository"`
				Tag        string `yaml:"tag"`
			} `yaml:"image"`
		} `yaml:"redis"`
	}
	dir := filepath.Join(root, ChartDir)
	if err := readYAML(filepath.Join(dir, "Chart.yaml"), &meta); err != nil {
		return Chart{}, err
	}
	if err := readYAML(filepath.Join(dir, "values.yaml"), &values); err != nil {
		return Chart{}, err
	}
	c := Chart{
		AppVersion:      meta.AppVersion,
		ImageRepository: values.Image.Repository,
		RedisRepository: values.Redis.Image.Repository,
		RedisTag:        values.Redis.Image.Tag,
	}
	if c.AppVersion == "" || c.ImageRepository == "" || c.RedisRepository == "" || c.RedisTag == "" {
		return Chart{}, fmt.Errorf("the chart in %s lacks appVersion, image.repository, redis.image.repository or redis.image.tag (read %+v)", dir, c)
	}
	return c, nil
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading the chart: %w", err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	return nil
}
