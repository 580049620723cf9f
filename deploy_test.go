package main

// Checks of the Kubernetes examples under deploy/: every file parses; the
// proxy containers set only variables the proxy reads, and it starts with
// them; they are hardened and probed on the ops port; every Secret reference
// resolves in its file; their grace period covers the drain, a refresh in
// flight and its write, and the drain outlasts the wait for thanks.io; a full
// token cache fits in the memory limit; a proxy that listens beyond loopback
// authenticates its callers (CALLER_KEYS_FILE from a mounted Secret), sits
// behind a NetworkPolicy for both its ports, spreads over nodes and has a
// PodDisruptionBudget that lets unhealthy replicas go; Services,
// PodDisruptionBudgets, ServiceMonitors and PodMonitors select what they
// should, and every proxy is scraped; the example Redis persists (appendonly
// yes, on a persistent volume); and the alerts use only metrics that
// README.md documents, and cover every scraped proxy. No network, no kubectl.
//
// TestPromtoolRules runs promtool check rules on the PrometheusRule's groups
// and promtool test rules on deploy/testdata/monitoring_test.yaml: it fails
// without promtool (.ci/install-promtool installs it; make test runs that).

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// deployGoRuntimeVariables are read by the Go runtime of the proxy's binary
// rather than by Config; the examples may set them.
var deployGoRuntimeVariables = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GOGC": true, "GODEBUG": true}

// deployUndocumentedMetrics may appear in alerts before README.md's metrics
// table lists them: none now.
var deployUndocumentedMetrics = map[string]bool{}

// deployProxyImage marks the proxy's containers.
const deployProxyImage = "thanksio-proxy"

// deployPendingWriteGrace is how long the proxy goes on retrying the write of
// a rotated refresh token after it was told to stop (pendingCloseGrace in
// auth/refresh.go): the grace period must leave it that time after the drain
// and a refresh in flight.
const deployPendingWriteGrace = 10 * time.Second

// deployRedisMinVersion is the oldest Redis the example may run: the proxy
// confirms writes with WAITAOF, new in 7.2.
var deployRedisMinVersion = [2]int{7, 2}

// deployCachedTenantBytes and deployBaseBytes are the resident memory of a
// cached tenant (with a 1 KiB access token) and of the process before any,
// as bench/README.md measured them (Redis store: 36.4 MiB, then 2,833 bytes
// a tenant up to 100,000). A full cache (CACHE_SIZE) on top of the base must
// leave a quarter of limits.memory for requests in flight and the GC.
const (
	deployCachedTenantBytes = 2833
	deployBaseBytes         = 36.4 * (1 << 20)
)

// deploySlowBodiesBytes is what 300 connections sending 1 MiB bodies
// slowly took beside MAX_REPLAY_MEMORY at their peak (README, Sizing).
const deploySlowBodiesBytes = 100 << 20

// deployCallerKeysLine is a valid caller keys file that stands in for the
// mounted Secret's, so that the rest of a container's configuration can be
// checked by loadConfig.
const deployCallerKeysLine = "test sha256:0000000000000000000000000000000000000000000000000000000000000000 *\n"

type k8sMeta struct {
	Name        string            `yaml:"name"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type k8sSelector struct {
	MatchLabels      map[string]string `yaml:"matchLabels"`
	MatchExpressions []any             `yaml:"matchExpressions"`
}

// matches reports whether the selector selects labels. Only matchLabels are
// understood (the examples use nothing else): a selector with expressions
// matches nothing here.
func (s k8sSelector) matches(labels map[string]string) bool {
	return len(s.MatchExpressions) == 0 && deploySelects(s.MatchLabels, labels)
}

func deploySelects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if l, ok := labels[k]; !ok || l != v {
			return false
		}
	}
	return true
}

type k8sWorkload struct {
	Spec struct {
		Selector k8sSelector `yaml:"selector"`
		Template struct {
			Metadata k8sMeta    `yaml:"metadata"`
			Spec     k8sPodSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sPodSpec struct {
	TerminationGracePeriodSeconds *int64                  `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               *k8sSecurityContext     `yaml:"securityContext"`
	InitContainers                []k8sContainer          `yaml:"initContainers"`
	Containers                    []k8sContainer          `yaml:"containers"`
	Volumes                       []k8sVolume             `yaml:"volumes"`
	TopologySpreadConstraints     []k8sTopologyConstraint `yaml:"topologySpreadConstraints"`
}

type k8sVolume struct {
	Name   string `yaml:"name"`
	Secret *struct {
		SecretName string `yaml:"secretName"`
		Items      []struct {
			Key  string `yaml:"key"`
			Path string `yaml:"path"`
		} `yaml:"items"`
	} `yaml:"secret"`
}

type k8sVolumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	SubPath   string `yaml:"subPath"`
}

type k8sTopologyConstraint struct {
	MaxSkew           int         `yaml:"maxSkew"`
	TopologyKey       string      `yaml:"topologyKey"`
	WhenUnsatisfiable string      `yaml:"whenUnsatisfiable"`
	LabelSelector     k8sSelector `yaml:"labelSelector"`
}

type k8sContainer struct {
	Name            string              `yaml:"name"`
	Image           string              `yaml:"image"`
	RestartPolicy   string              `yaml:"restartPolicy"`
	Env             []k8sEnvVar         `yaml:"env"`
	EnvFrom         []any               `yaml:"envFrom"`
	Ports           []k8sContainerPort  `yaml:"ports"`
	VolumeMounts    []k8sVolumeMount    `yaml:"volumeMounts"`
	StartupProbe    *k8sProbe           `yaml:"startupProbe"`
	LivenessProbe   *k8sProbe           `yaml:"livenessProbe"`
	ReadinessProbe  *k8sProbe           `yaml:"readinessProbe"`
	SecurityContext *k8sSecurityContext `yaml:"securityContext"`
	Resources       struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	Lifecycle *struct {
		PreStop *struct {
			Sleep *struct {
				Seconds int64 `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
}

type k8sEnvVar struct {
	Name      string  `yaml:"name"`
	Value     *string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef    *k8sKeyRef `yaml:"secretKeyRef"`
		ConfigMapKeyRef *k8sKeyRef `yaml:"configMapKeyRef"`
	} `yaml:"valueFrom"`
}

type k8sKeyRef struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

type k8sContainerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"` // a number or a port name
	} `yaml:"httpGet"`
}

type k8sSecurityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             *struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile *struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type k8sService struct {
	Metadata k8sMeta `yaml:"metadata"`
	Spec     struct {
		Selector  map[string]string `yaml:"selector"`
		ClusterIP string            `yaml:"clusterIP"`
		Ports     []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type k8sServiceMonitor struct {
	Spec struct {
		Selector  k8sSelector          `yaml:"selector"`
		Endpoints []k8sMetricsEndpoint `yaml:"endpoints"`
	} `yaml:"spec"`
}

type k8sPodMonitor struct {
	Spec struct {
		Selector            k8sSelector          `yaml:"selector"`
		JobLabel            string               `yaml:"jobLabel"`
		PodMetricsEndpoints []k8sMetricsEndpoint `yaml:"podMetricsEndpoints"`
	} `yaml:"spec"`
}

// k8sMetricsEndpoint is an endpoint of a ServiceMonitor or a PodMonitor.
type k8sMetricsEndpoint struct {
	Port string `yaml:"port"`
	Path string `yaml:"path"`
}

type k8sPodDisruptionBudget struct {
	Spec struct {
		Selector                   k8sSelector `yaml:"selector"`
		UnhealthyPodEvictionPolicy string      `yaml:"unhealthyPodEvictionPolicy"`
	} `yaml:"spec"`
}

type k8sNetworkPolicy struct {
	Spec struct {
		PodSelector k8sSelector `yaml:"podSelector"`
		PolicyTypes []string    `yaml:"policyTypes"`
		Ingress     []struct {
			Ports []struct {
				Port     any    `yaml:"port"` // a number or a port name
				Protocol string `yaml:"protocol"`
			} `yaml:"ports"`
			From []struct {
				PodSelector       *k8sSelector `yaml:"podSelector"`
				NamespaceSelector *k8sSelector `yaml:"namespaceSelector"`
				IPBlock           *struct {
					CIDR string `yaml:"cidr"`
				} `yaml:"ipBlock"`
			} `yaml:"from"`
		} `yaml:"ingress"`
	} `yaml:"spec"`
}

type k8sPrometheusRule struct {
	Spec struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Record      string            `yaml:"record"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	} `yaml:"spec"`
}

type k8sData struct {
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

// k8sManifest is one document of a deploy/ file.
type k8sManifest struct {
	file  string // base name
	index int
	kind  string
	name  string
	node  *yaml.Node
}

func (m *k8sManifest) String() string { return fmt.Sprintf("%s: %s %q", m.file, m.kind, m.name) }

func (m *k8sManifest) decode(t *testing.T, v any) {
	t.Helper()
	if err := m.node.Decode(v); err != nil {
		t.Fatalf("%s: %v", m, err)
	}
}

// deploySet is every document of every deploy/*.yaml, with the facts that
// checks across documents and files need.
type deploySet struct {
	files     []string
	manifests []*k8sManifest
	// Secrets and ConfigMaps by file, then name: their keys and values.
	secrets    map[string]map[string]map[string]string
	configMaps map[string]map[string]map[string]string
	workloads  []*deployWorkload
	services   []*deployService
	configVars map[string]string // the proxy's variables and their defaults
	// tmp holds the files that proxyEnv writes for CALLER_KEYS_FILE.
	tmp string
}

// deployWorkload is a Deployment (or other pod template) of a file.
type deployWorkload struct {
	file, name string
	spec       k8sWorkload
	ports      map[string]int // container ports by name, all containers
	numbers    map[int]bool   // container port numbers, all containers
	hasProxy   bool
	opsPort    int // the proxy's OPS_ADDR port, when its configuration loads
	// proxyNames are the names of its proxy containers, and proxyPorts their
	// ports by name.
	proxyNames []string
	proxyPorts map[string]int
}

// deployService is a Service, with its ports resolved to container ports of
// the pod template it selects in its file.
type deployService struct {
	file, name string
	labels     map[string]string
	spec       k8sService
	workload   *deployWorkload
	ports      map[string]int // service port name: container port
}

func loadDeploySet(t *testing.T) *deploySet {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("deploy", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sidecar.yaml", "shared.yaml", "monitoring.yaml", "redis.yaml"} {
		if !slices.Contains(files, filepath.Join("deploy", want)) {
			t.Errorf("deploy/%s is missing", want)
		}
	}
	set := &deploySet{
		secrets:    map[string]map[string]map[string]string{},
		configMaps: map[string]map[string]map[string]string{},
		configVars: deployConfigVariables(),
		tmp:        t.TempDir(),
	}
	for _, path := range files {
		base := filepath.Base(path)
		set.files = append(set.files, base)
		set.secrets[base] = map[string]map[string]string{}
		set.configMaps[base] = map[string]map[string]string{}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(raw)))
		for i := 0; ; i++ {
			var node yaml.Node
			err := dec.Decode(&node)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Errorf("%s: document %d does not parse: %v", path, i, err)
				break
			}
			if len(node.Content) == 0 || node.Content[0].Tag == "!!null" {
				continue // an empty document, such as comments before the first ---
			}
			var head struct {
				APIVersion string  `yaml:"apiVersion"`
				Kind       string  `yaml:"kind"`
				Metadata   k8sMeta `yaml:"metadata"`
			}
			if err := node.Decode(&head); err != nil {
				t.Errorf("%s: document %d is not a Kubernetes object: %v", path, i, err)
				continue
			}
			if head.APIVersion == "" || head.Kind == "" || head.Metadata.Name == "" {
				t.Errorf("%s: document %d lacks apiVersion, kind or metadata.name", path, i)
				continue
			}
			m := &k8sManifest{file: base, index: i, kind: head.Kind, name: head.Metadata.Name, node: &node}
			set.manifests = append(set.manifests, m)
			switch m.kind {
			case "Secret", "ConfigMap":
				var d k8sData
				m.decode(t, &d)
				values := map[string]string{}
				for k, v := range d.Data {
					if b, err := base64.StdEncoding.DecodeString(v); err == nil && m.kind == "Secret" {
						v = string(b)
					}
					values[k] = v
				}
				for k, v := range d.StringData {
					values[k] = v
				}
				if m.kind == "Secret" {
					set.secrets[base][m.name] = values
				} else {
					set.configMaps[base][m.name] = values
				}
			}
		}
	}
	if len(set.manifests) == 0 {
		t.Fatal("no manifests under deploy/")
	}
	if t.Failed() {
		t.FailNow()
	}

	// Pod templates, then Services: ServiceMonitors and alerts in other files
	// refer to them.
	for _, m := range set.manifests {
		if m.kind != "Deployment" && m.kind != "StatefulSet" && m.kind != "DaemonSet" {
			continue
		}
		w := &deployWorkload{file: m.file, name: m.name, ports: map[string]int{}, numbers: map[int]bool{}, proxyPorts: map[string]int{}}
		m.decode(t, &w.spec)
		pod := w.spec.Spec.Template.Spec
		for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
			for _, p := range c.Ports {
				if p.Name != "" {
					w.ports[p.Name] = p.ContainerPort
				}
				w.numbers[p.ContainerPort] = true
			}
			if !strings.Contains(c.Image, deployProxyImage) {
				continue
			}
			w.hasProxy = true
			w.proxyNames = append(w.proxyNames, c.Name)
			for _, p := range c.Ports {
				w.proxyPorts[p.Name] = p.ContainerPort
			}
			run, _, _ := set.proxyEnv(m.file, pod, c)
			if cfg, err := loadConfig(func(k string) string { return run[k] }); err == nil {
				if _, port, err := net.SplitHostPort(cfg.OpsAddr); err == nil {
					w.opsPort, _ = strconv.Atoi(port)
				}
			}
		}
		set.workloads = append(set.workloads, w)
	}
	for _, m := range set.manifests {
		if m.kind != "Service" {
			continue
		}
		s := &deployService{file: m.file, name: m.name, ports: map[string]int{}}
		m.decode(t, &s.spec)
		s.labels = s.spec.Metadata.Labels
		for _, w := range set.workloads {
			if w.file == m.file && deploySelects(s.spec.Spec.Selector, w.spec.Spec.Template.Metadata.Labels) {
				s.workload = w
			}
		}
		if s.workload != nil {
			for _, p := range s.spec.Spec.Ports {
				target := p.TargetPort
				if target == nil {
					target = p.Port
				}
				if port := deployResolvePort(target, s.workload.ports, s.workload.numbers); port != 0 {
					s.ports[p.Name] = port
				}
			}
		}
		set.services = append(set.services, s)
	}
	return set
}

// deployConfigVariables returns the variables that Config reads, with their
// defaults.
func deployConfigVariables() map[string]string {
	// The defaults as the proxy applies them: a configuration loaded from
	// an empty environment.
	cfg, err := loadConfig(func(string) string { return "" })
	if err != nil {
		panic("the default configuration does not load: " + err.Error())
	}
	vars := map[string]string{}
	val := reflect.ValueOf(*cfg)
	// VisibleFields: the fields of embedded groups (StoreConfig) too.
	for _, f := range reflect.VisibleFields(val.Type()) {
		if name, _, _ := strings.Cut(f.Tag.Get("env"), ","); name != "" {
			vars[name] = fmt.Sprint(val.FieldByIndex(f.Index).Interface())
		}
	}
	return vars
}

// proxyDuration returns the duration that the proxy reads from variable: its
// value in env (a container's environment, from proxyEnv), or else Config's
// default.
func (set *deploySet) proxyDuration(env map[string]string, variable string) (time.Duration, error) {
	def, ok := set.configVars[variable]
	if !ok {
		return 0, fmt.Errorf("the proxy reads no variable %s (see the env tags of Config in config.go)", variable)
	}
	v := env[variable]
	if v == "" {
		v = def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s %q: %v", variable, v, err)
	}
	return d, nil
}

// deployTestValue stands in for a value that comes from a Secret, so that the
// rest of a container's configuration can be checked by loadConfig.
func deployTestValue(variable string) string {
	switch variable {
	case "TOKEN_ENCRYPTION_KEY":
		return base64.StdEncoding.EncodeToString(make([]byte, 32))
	case "REDIS_URL":
		return "redis://redis.test:6379/0"
	case "ADMIN_TOKEN":
		return strings.Repeat("a", 32)
	case "OAUTH_REDIRECT_URL":
		return "https://proxy.test/oauth/callback"
	case "OAUTH_RETURN_URLS":
		return "https://app.test/"
	}
	return "test-value"
}

// proxyEnv returns the proxy container's environment twice: with test values
// standing in for Secrets (run), and with the example Secrets' own values
// (placeholder); and whether any value comes from a Secret. A
// CALLER_KEYS_FILE or THANKSIO_TOKEN_FILE in a Secret's volume becomes a
// file of set.tmp: a valid one in run, a copy of the Secret's in
// placeholder.
func (set *deploySet) proxyEnv(file string, pod k8sPodSpec, c k8sContainer) (run, placeholder map[string]string, usesSecret bool) {
	run, placeholder = map[string]string{}, map[string]string{}
	for _, e := range c.Env {
		switch {
		case (e.Name == "CALLER_KEYS_FILE" || e.Name == "THANKSIO_TOKEN_FILE") && e.Value != nil:
			run[e.Name], placeholder[e.Name] = *e.Value, *e.Value
			secret, key, _, ok := deploySecretFile(pod, c, *e.Value)
			content, defined := set.secrets[file][secret][key]
			if !ok || !defined {
				continue // deployCheckProxy says why
			}
			usesSecret = true
			valid := deployCallerKeysLine
			if e.Name == "THANKSIO_TOKEN_FILE" {
				valid = "test-personal-access-token\n"
			}
			run[e.Name] = set.writeTemp(valid)
			placeholder[e.Name] = set.writeTemp(content)
		case e.Value != nil:
			run[e.Name], placeholder[e.Name] = *e.Value, *e.Value
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			usesSecret = true
			r := e.ValueFrom.SecretKeyRef
			run[e.Name], placeholder[e.Name] = deployTestValue(e.Name), set.secrets[file][r.Name][r.Key]
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			v := set.configMaps[file][r.Name][r.Key]
			run[e.Name], placeholder[e.Name] = v, v
		default:
			run[e.Name], placeholder[e.Name] = deployTestValue(e.Name), deployTestValue(e.Name)
		}
	}
	return run, placeholder, usesSecret
}

// writeTemp writes content to a new file under set.tmp and returns its path.
func (set *deploySet) writeTemp(content string) string {
	f, err := os.CreateTemp(set.tmp, "file")
	if err != nil {
		panic(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		panic(err)
	}
	return f.Name()
}

// deploySecretFile returns the Secret and key whose content container c sees
// at path, through a Secret volume of pod, and the mount's subPath; ok is
// false when no Secret volume holds path.
func deploySecretFile(pod k8sPodSpec, c k8sContainer, path string) (secret, key, subPath string, ok bool) {
	for _, vm := range c.VolumeMounts {
		dir := strings.TrimSuffix(vm.MountPath, "/")
		rel, under := strings.CutPrefix(path, dir+"/")
		if vm.SubPath != "" {
			// The mount is one file (or directory) of the volume.
			switch {
			case path == dir:
				rel, under = vm.SubPath, true
			case under:
				rel = vm.SubPath + "/" + rel
			}
		}
		if !under {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != vm.Name || v.Secret == nil {
				continue
			}
			if len(v.Secret.Items) == 0 {
				return v.Secret.SecretName, rel, vm.SubPath, true
			}
			for _, item := range v.Secret.Items {
				if item.Path == rel {
					return v.Secret.SecretName, item.Key, vm.SubPath, true
				}
			}
		}
	}
	return "", "", "", false
}

func TestDeployExamples(t *testing.T) {
	set := loadDeploySet(t)
	var proxies, redises, rules, monitors, podMonitors int
	for _, file := range set.files {
		t.Run(file, func(t *testing.T) {
			for _, m := range set.manifests {
				if m.file != file {
					continue
				}
				t.Run(fmt.Sprintf("%d_%s_%s", m.index, m.kind, m.name), func(t *testing.T) {
					deployCheckStrings(t, m, m.node, nil)
					switch m.kind {
					case "Deployment", "StatefulSet", "DaemonSet":
						proxies += deployCheckWorkload(t, set, m)
						redises += deployCheckRedis(t, set, m)
					case "Service":
						deployCheckService(t, set, m)
					case "PodDisruptionBudget":
						var p k8sPodDisruptionBudget
						m.decode(t, &p)
						selected := deploySelected(set, m.file, p.Spec.Selector)
						if len(selected) == 0 {
							t.Errorf("%s: its selector matches no pod template in %s", m, m.file)
						}
						// A replica that is not ready serves nothing; with the
						// default policy it would block every node drain.
						if slices.ContainsFunc(selected, func(w *deployWorkload) bool { return w.hasProxy }) &&
							p.Spec.UnhealthyPodEvictionPolicy != "AlwaysAllow" {
							t.Errorf("%s: unhealthyPodEvictionPolicy %q, want AlwaysAllow: a proxy replica that is not ready (a Redis it cannot reach) must not block node drains", m, p.Spec.UnhealthyPodEvictionPolicy)
						}
					case "NetworkPolicy":
						deployCheckNetworkPolicy(t, set, m)
					case "ServiceMonitor":
						monitors++
						deployCheckServiceMonitor(t, set, m)
					case "PodMonitor":
						podMonitors++
						deployCheckPodMonitor(t, set, m)
					case "PrometheusRule":
						rules++
						deployCheckRule(t, set, m)
					}
				})
			}
		})
	}
	if proxies < 2 {
		t.Errorf("found %d proxy containers (image containing %q) under deploy/, want the sidecar's and the shared service's", proxies, deployProxyImage)
	}
	if redises == 0 {
		t.Errorf("found no Redis container (image redis:<version>) under deploy/, want redis.yaml's example")
	}
	if rules == 0 || monitors == 0 || podMonitors == 0 {
		t.Errorf("found %d PrometheusRules, %d ServiceMonitors and %d PodMonitors under deploy/, want all three", rules, monitors, podMonitors)
	}
	// Every proxy is scraped: the shared service's through its Service, the
	// sidecars' by a PodMonitor.
	scraped := deployScrapedWorkloads(t, set)
	for _, w := range set.workloads {
		if w.hasProxy && !scraped[w] {
			t.Errorf("%s: Deployment %q runs the proxy, but no ServiceMonitor or PodMonitor under deploy/ scrapes it", w.file, w.name)
		}
	}
}

// deploySelected returns the pod templates of file that selector selects.
func deploySelected(set *deploySet, file string, selector k8sSelector) []*deployWorkload {
	var selected []*deployWorkload
	for _, w := range set.workloads {
		if w.file == file && selector.matches(w.spec.Spec.Template.Metadata.Labels) {
			selected = append(selected, w)
		}
	}
	return selected
}

// deployScrapedWorkloads returns the pod templates that a ServiceMonitor
// (through a Service it selects) or a PodMonitor under deploy/ selects, in
// any file: the monitors are applied in the proxies' namespace.
func deployScrapedWorkloads(t *testing.T, set *deploySet) map[*deployWorkload]bool {
	scraped := map[*deployWorkload]bool{}
	for _, mon := range deployMonitors(t, set) {
		for _, s := range mon.services {
			if s.workload != nil {
				scraped[s.workload] = true
			}
		}
		for _, w := range mon.workloads {
			scraped[w] = true
		}
	}
	return scraped
}

// deployMonitor is a ServiceMonitor or a PodMonitor under deploy/, with what
// it selects.
type deployMonitor struct {
	manifest *k8sManifest
	// services are the Services that a ServiceMonitor selects.
	services []*deployService
	// pod is the PodMonitor (nil for a ServiceMonitor), and workloads the
	// workloads whose pod templates it selects.
	pod       *k8sPodMonitor
	workloads []*deployWorkload
}

// deployMonitors returns the monitors under deploy/, in any file, with the
// Services or workloads each selects.
func deployMonitors(t *testing.T, set *deploySet) []deployMonitor {
	var monitors []deployMonitor
	for _, m := range set.manifests {
		mon := deployMonitor{manifest: m}
		switch m.kind {
		case "ServiceMonitor":
			var sm k8sServiceMonitor
			m.decode(t, &sm)
			for _, s := range set.services {
				if sm.Spec.Selector.matches(s.labels) {
					mon.services = append(mon.services, s)
				}
			}
		case "PodMonitor":
			mon.pod = &k8sPodMonitor{}
			m.decode(t, mon.pod)
			for _, w := range set.workloads {
				if mon.pod.Spec.Selector.matches(w.spec.Spec.Template.Metadata.Labels) {
					mon.workloads = append(mon.workloads, w)
				}
			}
		default:
			continue
		}
		monitors = append(monitors, mon)
	}
	return monitors
}

// deployCheckPodMonitor checks that a PodMonitor selects pods that run the
// proxy, and scrapes /metrics on the proxy container's ops port.
func deployCheckPodMonitor(t *testing.T, set *deploySet, m *k8sManifest) {
	var pm k8sPodMonitor
	m.decode(t, &pm)
	selected := slices.DeleteFunc(slices.Clone(set.workloads), func(w *deployWorkload) bool {
		return !pm.Spec.Selector.matches(w.spec.Spec.Template.Metadata.Labels)
	})
	if len(selected) == 0 {
		t.Errorf("%s: its selector %v matches the pod template of no workload under deploy/", m, pm.Spec.Selector.MatchLabels)
	}
	deployCheckScrapes(t, m, "podMetricsEndpoints", pm.Spec.PodMetricsEndpoints, selected, func(e k8sMetricsEndpoint, w *deployWorkload) {
		port, ok := w.proxyPorts[e.Port]
		switch {
		case !w.hasProxy:
			t.Errorf("%s: selects the pods of %s %q, which run no proxy", m, w.file, w.name)
		case !ok:
			t.Errorf("%s: port %q is no port of the proxy container in %s %q (ports %v): it would scrape another container, or nothing", m, e.Port, w.file, w.name, w.proxyPorts)
		case port != w.opsPort:
			t.Errorf("%s: port %q of %s %q is container port %d, not the proxy's ops port %d", m, e.Port, w.file, w.name, port, w.opsPort)
		}
	})
	if pm.Spec.JobLabel != "" {
		for _, w := range selected {
			if w.spec.Spec.Template.Metadata.Labels[pm.Spec.JobLabel] == "" {
				t.Errorf("%s: jobLabel %q: the pods of %s %q have no such label, so their job would not name the application", m, pm.Spec.JobLabel, w.file, w.name)
			}
		}
	}
}

// deployCheckNetworkPolicy checks that a NetworkPolicy selects pods of its
// file, and that each of its ingress rules names both who (from) and which
// ports: a rule without either opens the pods to the whole cluster.
func deployCheckNetworkPolicy(t *testing.T, set *deploySet, m *k8sManifest) {
	var np k8sNetworkPolicy
	m.decode(t, &np)
	selected := deploySelected(set, m.file, np.Spec.PodSelector)
	if len(selected) == 0 {
		t.Errorf("%s: its podSelector matches no pod template in %s", m, m.file)
	}
	if !slices.Contains(np.Spec.PolicyTypes, "Ingress") {
		t.Errorf("%s: policyTypes %v lacks Ingress", m, np.Spec.PolicyTypes)
	}
	for i, r := range np.Spec.Ingress {
		if len(r.From) == 0 {
			t.Errorf("%s: ingress rule %d has no from: it admits every source", m, i)
		}
		if len(r.Ports) == 0 {
			t.Errorf("%s: ingress rule %d has no ports: it opens every port", m, i)
		}
		for j, f := range r.From {
			if f.PodSelector == nil && f.NamespaceSelector == nil && f.IPBlock == nil {
				t.Errorf("%s: ingress rule %d, from %d selects nothing", m, i, j)
			}
		}
		for _, p := range r.Ports {
			for _, w := range selected {
				if deployResolvePort(p.Port, w.ports, w.numbers) == 0 {
					t.Errorf("%s: ingress rule %d: port %v is no container port of %q", m, i, p.Port, w.name)
				}
			}
		}
	}
}

// deployNetworkPolicyPorts returns the container ports of w that a
// NetworkPolicy of its file admits from some source.
func deployNetworkPolicyPorts(t *testing.T, set *deploySet, w *deployWorkload) map[int]bool {
	admitted := map[int]bool{}
	for _, m := range set.manifests {
		if m.kind != "NetworkPolicy" || m.file != w.file {
			continue
		}
		var np k8sNetworkPolicy
		m.decode(t, &np)
		if !np.Spec.PodSelector.matches(w.spec.Spec.Template.Metadata.Labels) {
			continue
		}
		for _, r := range np.Spec.Ingress {
			if len(r.From) == 0 {
				continue
			}
			for _, p := range r.Ports {
				if port := deployResolvePort(p.Port, w.ports, w.numbers); port != 0 {
					admitted[port] = true
				}
			}
		}
	}
	return admitted
}

// deployCheckStrings fails on labels, annotations, selectors, Secret and
// ConfigMap data and env values that YAML reads as numbers or booleans
// (prometheus.io/port: 9090, value: 0): Kubernetes refuses them.
func deployCheckStrings(t *testing.T, m *k8sManifest, n *yaml.Node, path []string) {
	t.Helper()
	parent := ""
	if len(path) > 0 {
		parent = path[len(path)-1]
	}
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			deployCheckStrings(t, m, c, path)
		}
	case yaml.MappingNode:
		stringMap := parent == "labels" || parent == "annotations" || parent == "matchLabels" ||
			parent == "stringData" || parent == "data" || parent == "selector" && m.kind == "Service"
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			envValue := key == "value" && parent == "env"
			if (stringMap || envValue) && val.Kind == yaml.ScalarNode && val.Tag != "!!str" {
				t.Errorf("%s: %s: %s is %s, not a string: quote it", m, strings.Join(append(slices.Clone(path), key), "."), val.Value, val.Tag)
			}
			deployCheckStrings(t, m, val, append(slices.Clone(path), key))
		}
	}
}

// deployCheckWorkload checks a pod template and returns how many proxy
// containers it holds.
func deployCheckWorkload(t *testing.T, set *deploySet, m *k8sManifest) int {
	var w *deployWorkload
	for _, x := range set.workloads {
		if x.file == m.file && x.name == m.name {
			w = x
		}
	}
	spec := w.spec.Spec
	pod := spec.Template.Spec
	if !spec.Selector.matches(spec.Template.Metadata.Labels) {
		t.Errorf("%s: spec.selector does not match the pod template's labels", m)
	}
	secrets, configMaps := set.secrets[m.file], set.configMaps[m.file]
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		s, ok := secrets[v.Secret.SecretName]
		if !ok {
			t.Errorf("%s: volume %s names Secret %q, which %s does not define", m, v.Name, v.Secret.SecretName, m.file)
			continue
		}
		for _, item := range v.Secret.Items {
			if _, ok := s[item.Key]; !ok {
				t.Errorf("%s: volume %s: Secret %q in %s has no key %q", m, v.Name, v.Secret.SecretName, m.file, item.Key)
			}
		}
	}
	proxies := 0
	for i, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		where := fmt.Sprintf("%s: container %q", m, c.Name)
		// Every reference to a Secret or ConfigMap resolves in this file.
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				if s, ok := secrets[r.Name]; !ok {
					t.Errorf("%s: env %s: secretKeyRef names Secret %q, which %s does not define", where, e.Name, r.Name, m.file)
				} else if _, ok := s[r.Key]; !ok {
					t.Errorf("%s: env %s: Secret %q in %s has no key %q", where, e.Name, r.Name, m.file, r.Key)
				}
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				if cm, ok := configMaps[r.Name]; !ok {
					t.Errorf("%s: env %s: configMapKeyRef names ConfigMap %q, which %s does not define", where, e.Name, r.Name, m.file)
				} else if _, ok := cm[r.Key]; !ok {
					t.Errorf("%s: env %s: ConfigMap %q in %s has no key %q", where, e.Name, r.Name, m.file, r.Key)
				}
			}
		}
		if !strings.Contains(c.Image, deployProxyImage) {
			continue
		}
		proxies++
		if i < len(pod.InitContainers) && c.RestartPolicy != "Always" {
			t.Errorf("%s: the proxy never exits: as an init container it must be a native sidecar (restartPolicy: Always)", where)
		}
		deployCheckProxy(t, set, m, w, c, where)
	}
	return proxies
}

// deployCheckProxy checks one proxy container of workload w.
func deployCheckProxy(t *testing.T, set *deploySet, m *k8sManifest, w *deployWorkload, c k8sContainer, where string) {
	pod := w.spec.Spec.Template.Spec

	// Only variables the proxy reads, each once: a misspelt one would leave
	// a default silently in place.
	if len(c.EnvFrom) > 0 {
		t.Errorf("%s: envFrom hides which variables are set; list them under env", where)
	}
	seen := map[string]bool{}
	for _, e := range c.Env {
		if _, ok := set.configVars[e.Name]; !ok && !deployGoRuntimeVariables[e.Name] {
			t.Errorf("%s: env %s: the proxy reads no such variable (see the env tags of Config in config.go)", where, e.Name)
		}
		if seen[e.Name] {
			t.Errorf("%s: env %s is set twice", where, e.Name)
		}
		seen[e.Name] = true
	}

	// The proxy starts with this configuration once the Secret is filled
	// in, and refuses to with the example's placeholders.
	run, placeholder, usesSecret := set.proxyEnv(m.file, pod, c)
	cfg, err := loadConfig(func(k string) string { return run[k] })
	if err != nil {
		t.Errorf("%s: the proxy would not start with this configuration: %v", where, err)
		return
	}
	if usesSecret {
		if _, err := loadConfig(func(k string) string { return placeholder[k] }); err == nil {
			t.Errorf("%s: the proxy starts with the example Secret's placeholders; keep one invalid (TOKEN_ENCRYPTION_KEY: REPLACE_ME) so that an unedited example cannot run", where)
		}
	}

	opsHost, opsPortText, err := net.SplitHostPort(cfg.OpsAddr)
	if err != nil {
		t.Errorf("%s: OPS_ADDR %q: %v", where, cfg.OpsAddr, err)
		return
	}
	opsPort, _ := strconv.Atoi(opsPortText)
	if deployLoopback(opsHost) {
		t.Errorf("%s: OPS_ADDR %q is on loopback: the kubelet's probes and Prometheus cannot reach it", where, cfg.OpsAddr)
	}
	dataHost, dataPortText, err := net.SplitHostPort(cfg.ListenAddr)
	if err != nil {
		t.Errorf("%s: LISTEN_ADDR %q: %v", where, cfg.ListenAddr, err)
		return
	}
	dataPort, _ := strconv.Atoi(dataPortText)
	for _, p := range c.Ports {
		if p.ContainerPort != opsPort && (p.ContainerPort != dataPort || deployLoopback(dataHost)) {
			t.Errorf("%s: containerPort %d (%s) is served by neither LISTEN_ADDR %q nor OPS_ADDR %q", where, p.ContainerPort, p.Name, cfg.ListenAddr, cfg.OpsAddr)
		}
	}

	// Probes on the ops port.
	checkProbe := func(kind string, p *k8sProbe, paths ...string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: no %s probe (httpGet %s on the ops port)", where, kind, paths[0])
			return
		}
		if !slices.Contains(paths, p.HTTPGet.Path) {
			t.Errorf("%s: %s probe path %q, want %s", where, kind, p.HTTPGet.Path, strings.Join(paths, " or "))
		}
		port := 0
		switch v := p.HTTPGet.Port.(type) {
		case int:
			port = v
		case string:
			for _, cp := range c.Ports {
				if cp.Name == v {
					port = cp.ContainerPort
				}
			}
		}
		if port != opsPort {
			t.Errorf("%s: %s probe port %v is not the ops port %d (OPS_ADDR %q)", where, kind, p.HTTPGet.Port, opsPort, cfg.OpsAddr)
		}
	}
	checkProbe("liveness", c.LivenessProbe, "/healthz")
	checkProbe("readiness", c.ReadinessProbe, "/readyz")
	if c.StartupProbe != nil {
		checkProbe("startup", c.StartupProbe, "/healthz", "/readyz")
	}

	// Hardening; the pod's settings count where Kubernetes applies them.
	sc, podSC := deployCheckNonRoot(t, where, c, pod, "set to a non-root user (65532, distroless nonroot)")
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: securityContext.readOnlyRootFilesystem is not true", where)
	}
	if seccomp := deployOrPod(sc.SeccompProfile, podSC.SeccompProfile); seccomp == nil || seccomp.Type != "RuntimeDefault" {
		t.Errorf("%s: securityContext.seccompProfile is not RuntimeDefault", where)
	}

	// Resources.
	for _, r := range []struct {
		what  string
		value string
	}{
		{"requests.cpu", c.Resources.Requests["cpu"]},
		{"requests.memory", c.Resources.Requests["memory"]},
		{"limits.memory", c.Resources.Limits["memory"]},
	} {
		if r.value == "" {
			t.Errorf("%s: resources.%s is not set", where, r.what)
		}
	}

	// The whole stop fits in the grace period: the preStop sleep, the drain
	// of requests (SHUTDOWN_TIMEOUT), a refresh in flight (REFRESH_TIMEOUT)
	// and the retried write of its rotated token. A proxy killed before that
	// write lands loses the tenant's only valid refresh token.
	grace := 30 * time.Second // Kubernetes' default
	if pod.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	}
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	shutdown, err := set.proxyDuration(run, "SHUTDOWN_TIMEOUT")
	if err != nil {
		t.Errorf("%s: %v", where, err)
	}
	refresh, err := set.proxyDuration(run, "REFRESH_TIMEOUT")
	if err != nil {
		t.Errorf("%s: %v", where, err)
	}
	// A single-account proxy (a static token, no store to import others
	// into) refreshes and caches nothing.
	singleAccount := cfg.staticToken != "" && cfg.RedisURL == "" && cfg.AdminToken == ""
	if singleAccount {
		refresh = 0
	}
	if need := preStop + shutdown + refresh + deployPendingWriteGrace; grace <= need {
		t.Errorf("%s: terminationGracePeriodSeconds (%s) is not above the preStop sleep (%s) + SHUTDOWN_TIMEOUT (%s) + REFRESH_TIMEOUT (%s) + the rotated token's write (%s) = %s: leave a margin",
			where, grace, preStop, shutdown, refresh, deployPendingWriteGrace, need)
	}
	// The drain outlasts the wait for thanks.io's answer, or every rollout
	// cuts the slow calls in flight.
	upstream, err := set.proxyDuration(run, "UPSTREAM_TIMEOUT")
	if err != nil {
		t.Errorf("%s: %v", where, err)
	}
	if shutdown < upstream {
		t.Errorf("%s: SHUTDOWN_TIMEOUT (%s) is below UPSTREAM_TIMEOUT (%s): a call still waiting for thanks.io when the drain ends is cut; raise SHUTDOWN_TIMEOUT (and the grace period) or lower UPSTREAM_TIMEOUT", where, shutdown, upstream)
	}

	// A full token cache fits in the memory limit, with a quarter to spare.
	cached := cfg.CacheSize
	if singleAccount {
		cached = 0
	}
	if limit, err := deployBytes(c.Resources.Limits["memory"]); err != nil {
		t.Errorf("%s: resources.limits.memory: %v", where, err)
	} else if need := deployBaseBytes + float64(cached)*deployCachedTenantBytes; need > 0.75*float64(limit) {
		t.Errorf("%s: CACHE_SIZE %d: a full cache takes about %.0f MiB (%.1f MiB + %d bytes a tenant, bench/README.md), above three quarters of limits.memory %s: lower CACHE_SIZE or raise the limit",
			where, cfg.CacheSize, need/(1<<20), deployBaseBytes/(1<<20), deployCachedTenantBytes, c.Resources.Limits["memory"])
	}

	// Slow request bodies: what is kept for replays, and about 100 MiB more
	// at the peak of 300 slow 1 MiB bodies (README, Sizing), fit the memory
	// limit, and the runtime knows of the limit.
	if limit, err := deployBytes(c.Resources.Limits["memory"]); err == nil {
		if need := cfg.MaxReplayMemory + deploySlowBodiesBytes; need > limit {
			t.Errorf("%s: MAX_REPLAY_MEMORY %d MiB and %d MiB for slow bodies and the collector's headroom (README, Sizing) exceed limits.memory %s: lower MAX_REPLAY_MEMORY or raise the limit",
				where, cfg.MaxReplayMemory>>20, deploySlowBodiesBytes>>20, c.Resources.Limits["memory"])
		}
		if v := run["GOMEMLIMIT"]; v == "" {
			t.Errorf("%s: GOMEMLIMIT is not set: the runtime does not collect harder before limits.memory %s", where, c.Resources.Limits["memory"])
		} else if soft, err := deployBytes(strings.TrimSuffix(v, "B")); err != nil || soft >= limit {
			t.Errorf("%s: GOMEMLIMIT %q: want a size below limits.memory %s", where, v, c.Resources.Limits["memory"])
		}
	}

	if !deployLoopback(dataHost) {
		deployCheckSharedProxy(t, set, m, w, c, where, dataPort, opsPort)
	}

	// Scraping by annotation, where asked for, reaches /metrics on the ops
	// port.
	if ann := w.spec.Spec.Template.Metadata.Annotations; ann["prometheus.io/scrape"] == "true" {
		if ann["prometheus.io/port"] != strconv.Itoa(opsPort) {
			t.Errorf("%s: prometheus.io/port %q is not the ops port %d", where, ann["prometheus.io/port"], opsPort)
		}
		if p := ann["prometheus.io/path"]; p != "/metrics" {
			t.Errorf("%s: prometheus.io/path %q, want /metrics", where, p)
		}
	}
}

// deployCheckSharedProxy checks a proxy that other pods can call (LISTEN_ADDR
// beyond loopback): it authenticates its callers with a caller keys file
// mounted from a Secret, a NetworkPolicy admits some sources to its data and
// ops ports, its replicas spread over nodes, and a PodDisruptionBudget
// covers them.
func deployCheckSharedProxy(t *testing.T, set *deploySet, m *k8sManifest, w *deployWorkload, c k8sContainer, where string, dataPort, opsPort int) {
	pod := w.spec.Spec.Template.Spec
	labels := w.spec.Spec.Template.Metadata.Labels

	// Caller authentication, from a Secret that updates in place.
	i := slices.IndexFunc(c.Env, func(e k8sEnvVar) bool { return e.Name == "CALLER_KEYS_FILE" })
	switch {
	case i < 0 || c.Env[i].Value == nil || *c.Env[i].Value == "":
		t.Errorf("%s: LISTEN_ADDR is not loopback, but CALLER_KEYS_FILE is not set: any pod that reaches it can act for any tenant", where)
	default:
		path := *c.Env[i].Value
		secret, key, subPath, ok := deploySecretFile(pod, c, path)
		switch {
		case !ok:
			t.Errorf("%s: CALLER_KEYS_FILE %s is in no Secret volume mounted in the container", where, path)
		case subPath != "":
			t.Errorf("%s: CALLER_KEYS_FILE %s is mounted with subPath %q: a subPath mount never sees the Secret's updates, so callers could not be added or revoked without a restart", where, path, subPath)
		case set.secrets[m.file][secret] == nil:
			t.Errorf("%s: CALLER_KEYS_FILE %s comes from Secret %q, which %s does not define", where, path, secret, m.file)
		default:
			if _, ok := set.secrets[m.file][secret][key]; !ok {
				t.Errorf("%s: CALLER_KEYS_FILE %s comes from key %q of Secret %q, which has no such key", where, path, key, secret)
			}
		}
	}

	// Both ports behind a NetworkPolicy.
	admitted := deployNetworkPolicyPorts(t, set, w)
	if len(admitted) == 0 {
		t.Errorf("%s: no NetworkPolicy in %s selects its pods: the whole cluster reaches ports %d and %d", where, m.file, dataPort, opsPort)
	} else {
		for _, p := range []int{dataPort, opsPort} {
			if !admitted[p] {
				t.Errorf("%s: the NetworkPolicy of %s admits no source to port %d: callers (data port) or Prometheus (ops port) are shut out", where, m.file, p)
			}
		}
	}

	// Replicas spread over nodes, strictly.
	if !slices.ContainsFunc(pod.TopologySpreadConstraints, func(tc k8sTopologyConstraint) bool {
		return tc.TopologyKey == "kubernetes.io/hostname" && tc.WhenUnsatisfiable == "DoNotSchedule" &&
			tc.MaxSkew >= 1 && tc.LabelSelector.matches(labels)
	}) {
		t.Errorf("%s: no topologySpreadConstraint on kubernetes.io/hostname with whenUnsatisfiable: DoNotSchedule selects its pods: replicas may pile up on one node", where)
	}

	// A PodDisruptionBudget (its policy is checked with it).
	if !slices.ContainsFunc(set.manifests, func(x *k8sManifest) bool {
		if x.kind != "PodDisruptionBudget" || x.file != m.file {
			return false
		}
		var p k8sPodDisruptionBudget
		x.decode(t, &p)
		return p.Spec.Selector.matches(labels)
	}) {
		t.Errorf("%s: no PodDisruptionBudget in %s selects its pods", where, m.file)
	}
}

// deployBytes parses a Kubernetes memory quantity such as 512Mi or 1G.
func deployBytes(q string) (int64, error) {
	units := []struct {
		suffix string
		factor int64
	}{
		{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
		{"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
	}
	for _, u := range units {
		if n, ok := strings.CutSuffix(q, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%q is not a quantity such as 512Mi", q)
			}
			return v * u.factor, nil
		}
	}
	v, err := strconv.ParseInt(q, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a quantity such as 512Mi", q)
	}
	return v, nil
}

// k8sRedisWorkload is what deployCheckRedis reads of a workload beyond
// k8sWorkload: how its containers start and what they mount, its volumes, and
// a StatefulSet's governing Service and volume claim templates.
type k8sRedisWorkload struct {
	Spec struct {
		ServiceName string `yaml:"serviceName"`
		Template    struct {
			Spec struct {
				Containers []k8sRedisContainer `yaml:"containers"`
				Volumes    []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name  string `yaml:"name"`
						Items []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"configMap"`
					PersistentVolumeClaim *struct {
						ClaimName string `yaml:"claimName"`
					} `yaml:"persistentVolumeClaim"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata k8sMeta `yaml:"metadata"`
			Spec     struct {
				Resources struct {
					Requests map[string]string `yaml:"requests"`
				} `yaml:"resources"`
			} `yaml:"spec"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type k8sRedisContainer struct {
	Name         string      `yaml:"name"`
	Command      []string    `yaml:"command"`
	Args         []string    `yaml:"args"`
	Env          []k8sEnvVar `yaml:"env"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

var deployRedisVersion = regexp.MustCompile(`^([0-9]+)\.([0-9]+)`)

// deployRedisImage reports whether image is Redis's (its repository's last
// part is redis), and the version (major, minor) that its tag names, if any.
func deployRedisImage(image string) (redis bool, version [2]int, versioned bool) {
	image, _, _ = strings.Cut(image, "@")
	repo, tag := image, ""
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		repo, tag = image[:i], image[i+1:]
	}
	if repo[strings.LastIndex(repo, "/")+1:] != "redis" {
		return false, version, false
	}
	m := deployRedisVersion.FindStringSubmatch(tag)
	if m == nil {
		return true, version, false
	}
	version[0], _ = strconv.Atoi(m[1])
	version[1], _ = strconv.Atoi(m[2])
	return true, version, true
}

// deployRedisConfig adds the directives of a redis.conf to conf (lower-case
// name: value; a later one replaces an earlier one, as in Redis).
func deployRedisConfig(text string, conf map[string]string) {
	for _, line := range strings.Split(text, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		conf[strings.ToLower(fields[0])] = strings.Trim(strings.Join(fields[1:], " "), `"'`)
	}
}

// deployCheckRedis checks the Redis containers of a workload (image redis:
// 7.2 or later) and returns how many it holds. Every token lives in that
// Redis, so it must persist them: appendonly yes, fsynced every second or on
// every write, no eviction, and its data directory on a persistent volume.
// Its password comes from a Secret, and it is probed, bounded and hardened.
func deployCheckRedis(t *testing.T, set *deploySet, m *k8sManifest) int {
	var w *deployWorkload
	for _, x := range set.workloads {
		if x.file == m.file && x.name == m.name {
			w = x
		}
	}
	var rw k8sRedisWorkload
	m.decode(t, &rw)
	pod := w.spec.Spec.Template.Spec
	redises := 0
	for _, c := range pod.Containers {
		redis, version, versioned := deployRedisImage(c.Image)
		if !redis {
			continue
		}
		redises++
		where := fmt.Sprintf("%s: container %q", m, c.Name)
		if !versioned || version[0] < deployRedisMinVersion[0] || version[0] == deployRedisMinVersion[0] && version[1] < deployRedisMinVersion[1] {
			t.Errorf("%s: image %q: want Redis %d.%d or later (the proxy confirms writes with WAITAOF), pinned in the tag", where, c.Image, deployRedisMinVersion[0], deployRedisMinVersion[1])
		}
		i := slices.IndexFunc(rw.Spec.Template.Spec.Containers, func(x k8sRedisContainer) bool { return x.Name == c.Name })
		rc := rw.Spec.Template.Spec.Containers[i]
		start := slices.Concat(rc.Command, rc.Args)
		startText := strings.Join(start, "\n")

		// The configuration Redis starts with: the ConfigMap files that its
		// command names, then --name value options.
		conf := map[string]string{}
		for _, vm := range rc.VolumeMounts {
			for _, v := range rw.Spec.Template.Spec.Volumes {
				if v.Name != vm.Name || v.ConfigMap == nil {
					continue
				}
				data := set.configMaps[m.file][v.ConfigMap.Name]
				files := map[string]string{} // path in the container: key
				for k := range data {
					files[k] = k
				}
				if len(v.ConfigMap.Items) > 0 {
					files = map[string]string{}
					for _, item := range v.ConfigMap.Items {
						files[item.Path] = item.Key
					}
				}
				for path, key := range files {
					if strings.Contains(startText, strings.TrimSuffix(vm.MountPath, "/")+"/"+path) {
						deployRedisConfig(data[key], conf)
					}
				}
			}
		}
		for j := 0; j+1 < len(start); j++ {
			if name, ok := strings.CutPrefix(start[j], "--"); ok && name != "" {
				conf[strings.ToLower(name)] = start[j+1]
			}
		}

		if conf["appendonly"] != "yes" {
			t.Errorf("%s: appendonly is %q, want yes: without persistence a restart of Redis loses every token", where, conf["appendonly"])
		}
		if f, ok := conf["appendfsync"]; ok && f != "everysec" && f != "always" {
			t.Errorf("%s: appendfsync %q, want everysec or always", where, f)
		}
		if p, ok := conf["maxmemory-policy"]; ok && p != "noeviction" {
			t.Errorf("%s: maxmemory-policy %q evicts keys, that is tokens: want noeviction", where, p)
		}
		if _, ok := conf["requirepass"]; ok {
			t.Errorf("%s: requirepass is set in a ConfigMap or the command line: take the password from a Secret", where)
		}

		// The data directory is on a persistent volume.
		dir := conf["dir"]
		if !strings.HasPrefix(dir, "/") {
			t.Errorf("%s: dir %q: set it to an absolute path on the persistent volume", where, dir)
		} else {
			mount, longest := "", -1 // the volume of the deepest mount that holds dir
			for _, vm := range rc.VolumeMounts {
				p := strings.TrimSuffix(vm.MountPath, "/")
				if (dir == p || strings.HasPrefix(dir, p+"/")) && len(p) > longest {
					mount, longest = vm.Name, len(p)
				}
			}
			persistent := false
			for _, v := range rw.Spec.Template.Spec.Volumes {
				if v.Name == mount && v.PersistentVolumeClaim != nil {
					persistent = true
				}
			}
			for _, tpl := range rw.Spec.VolumeClaimTemplates {
				if tpl.Metadata.Name == mount {
					persistent = true
					if tpl.Spec.Resources.Requests["storage"] == "" {
						t.Errorf("%s: volumeClaimTemplate %q requests no storage", where, tpl.Metadata.Name)
					}
				}
			}
			if !persistent {
				t.Errorf("%s: dir %s is not on a persistent volume (a volumeClaimTemplate or a persistentVolumeClaim volume)", where, dir)
			}
		}

		// The password, from a Secret, set as requirepass.
		fromSecret := false
		for _, e := range rc.Env {
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				continue
			}
			for _, ref := range []string{"$" + e.Name, "${" + e.Name + "}", "$(" + e.Name + ")"} {
				if strings.Contains(startText, ref) {
					fromSecret = true
				}
			}
		}
		if !fromSecret || !strings.Contains(startText, "requirepass") {
			t.Errorf("%s: its command does not set requirepass from a variable that a Secret fills", where)
		}

		// Probed, bounded and hardened.
		if c.LivenessProbe == nil || c.ReadinessProbe == nil {
			t.Errorf("%s: no liveness or readiness probe", where)
		}
		if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
			t.Errorf("%s: resources.requests.cpu, requests.memory and limits.memory must be set", where)
		}
		deployCheckNonRoot(t, where, c, pod, "a non-root user (999, the image's redis)")
	}

	// A StatefulSet's governing Service is headless and in its file.
	if redises > 0 && m.kind == "StatefulSet" {
		if !slices.ContainsFunc(set.services, func(s *deployService) bool {
			return s.file == m.file && s.name == rw.Spec.ServiceName && s.workload == w && s.spec.Spec.ClusterIP == "None"
		}) {
			t.Errorf("%s: serviceName %q names no headless Service (clusterIP: None) in %s that selects its pods", m, rw.Spec.ServiceName, m.file)
		}
	}
	return redises
}

func deployCheckService(t *testing.T, set *deploySet, m *k8sManifest) {
	for _, s := range set.services {
		if s.file != m.file || s.name != m.name {
			continue
		}
		if s.workload == nil {
			t.Errorf("%s: its selector matches no pod template in %s", m, m.file)
			return
		}
		for _, p := range s.spec.Spec.Ports {
			if _, ok := s.ports[p.Name]; !ok {
				t.Errorf("%s: port %q targets %v, which no container of %q declares", m, p.Name, p.TargetPort, s.workload.name)
			}
		}
	}
}

func deployCheckServiceMonitor(t *testing.T, set *deploySet, m *k8sManifest) {
	var sm k8sServiceMonitor
	m.decode(t, &sm)
	selected := slices.DeleteFunc(slices.Clone(set.services), func(s *deployService) bool {
		return !sm.Spec.Selector.matches(s.labels)
	})
	if len(selected) == 0 {
		t.Errorf("%s: its selector matches the labels of no Service under deploy/", m)
	}
	deployCheckScrapes(t, m, "endpoints", sm.Spec.Endpoints, selected, func(e k8sMetricsEndpoint, s *deployService) {
		port, ok := s.ports[e.Port]
		switch {
		case !ok:
			t.Errorf("%s: Service %q has no port named %q that reaches a container", m, s.name, e.Port)
		case !s.workload.hasProxy:
			t.Errorf("%s: Service %q selects pods without the proxy", m, s.name)
		case port != s.workload.opsPort:
			t.Errorf("%s: port %q of Service %q reaches container port %d, not the proxy's ops port %d", m, e.Port, s.name, port, s.workload.opsPort)
		}
	})
}

// deployCheckScrapes checks the endpoints of m, a ServiceMonitor or a
// PodMonitor, whose spec lists them under field: there is one at least,
// each scrapes /metrics, and checkPort checks its port on each of the
// targets that m selects.
func deployCheckScrapes[T any](t *testing.T, m *k8sManifest, field string, endpoints []k8sMetricsEndpoint, selected []T, checkPort func(e k8sMetricsEndpoint, target T)) {
	t.Helper()
	if len(endpoints) == 0 {
		t.Errorf("%s: no %s", m, field)
	}
	for _, e := range endpoints {
		if e.Path != "/metrics" {
			t.Errorf("%s: endpoint path %q, want /metrics", m, e.Path)
		}
		for _, target := range selected {
			checkPort(e, target)
		}
	}
}

var (
	promDuration  = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
	promJob       = regexp.MustCompile(`\bjob\s*=~?\s*"([^"]*)"`)
	promUp        = regexp.MustCompile(`\bup\s*\{([^}]*)\}`)
	promContainer = regexp.MustCompile(`\bcontainer\s*=\s*"([^"]*)"`)
)

func deployCheckRule(t *testing.T, set *deploySet, m *k8sManifest) {
	var pr k8sPrometheusRule
	m.decode(t, &pr)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The jobs that the monitors under deploy/ produce: the Services' names
	// for a ServiceMonitor; for a PodMonitor, the value of its jobLabel on
	// the pods, or else <namespace>/<its name> (any namespace).
	jobs := map[string]bool{}
	var podMonitorJobs []string // suffixes: /<name>
	for _, mon := range deployMonitors(t, set) {
		for _, s := range mon.services {
			jobs[s.name] = true
		}
		if mon.pod != nil {
			podMonitorJobs = append(podMonitorJobs, "/"+mon.manifest.name)
			for _, w := range mon.workloads {
				if v := w.spec.Spec.Template.Metadata.Labels[mon.pod.Spec.JobLabel]; v != "" {
					jobs[v] = true
				}
			}
		}
	}
	// The proxy containers that the monitors scrape, by name: the alerts on
	// up must cover each of them, and name no other.
	proxyContainers := map[string]bool{}
	for w := range deployScrapedWorkloads(t, set) {
		for _, n := range w.proxyNames {
			proxyContainers[n] = true
		}
	}
	upContainers := map[string]bool{}

	alerts := map[string]bool{}
	count := 0
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			name := deployFirst(r.Alert, r.Record)
			if name == "" {
				t.Errorf("%s: group %q has a rule with neither alert nor record", m, g.Name)
				continue
			}
			count++
			where := fmt.Sprintf("%s: %s", m, name)
			names, err := promMetricNames(r.Expr)
			if err != nil {
				t.Errorf("%s: expr: %v", where, err)
			}
			if len(names) == 0 {
				t.Errorf("%s: expr %q selects no metric", where, r.Expr)
			}
			for _, n := range names {
				switch {
				case n == "up":
				case !strings.HasPrefix(n, "thanksio_proxy_"):
					t.Errorf("%s: expr uses %s, which is neither up nor a thanksio_proxy_ metric", where, n)
				case deployDocumentedMetric(readme, n):
				case deployUndocumentedMetrics[n]:
					t.Logf("%s: %s is not in README.md's metrics table yet (allowed)", where, n)
				default:
					t.Errorf("%s: expr uses %s, which README.md does not document: does the proxy export it?", where, n)
				}
			}
			for _, j := range promJob.FindAllStringSubmatch(r.Expr, -1) {
				if !jobs[j[1]] && !slices.ContainsFunc(podMonitorJobs, func(suffix string) bool { return strings.HasSuffix(j[1], suffix) }) {
					t.Errorf("%s: expr selects job %q, but the monitors under deploy/ produce the jobs %v", where, j[1], deploySortedKeys(jobs))
				}
			}
			for _, up := range promUp.FindAllStringSubmatch(r.Expr, -1) {
				for _, c := range promContainer.FindAllStringSubmatch(up[1], -1) {
					upContainers[c[1]] = true
					if !proxyContainers[c[1]] {
						t.Errorf("%s: expr selects up of container %q, but the proxy containers that the monitors scrape are %v", where, c[1], deploySortedKeys(proxyContainers))
					}
				}
			}
			if r.Alert == "" {
				continue
			}
			if alerts[r.Alert] {
				t.Errorf("%s: alert defined twice", where)
			}
			alerts[r.Alert] = true
			if !promDuration.MatchString(r.For) {
				t.Errorf("%s: for %q is not a duration such as 5m", where, r.For)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
				t.Errorf("%s: labels.severity %q, want critical, warning or info", where, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", where, a)
				}
			}
			if strings.TrimSpace(r.Annotations["runbook"]+r.Annotations["runbook_url"]) == "" {
				t.Errorf("%s: no runbook or runbook_url annotation", where)
			}
		}
	}
	if count == 0 {
		t.Errorf("%s: no rules", m)
	}
	for n := range proxyContainers {
		if !upContainers[n] {
			t.Errorf("%s: no alert selects up{container=%q}: a proxy container of that name, scraped by a monitor under deploy/, is not covered when it goes down", m, n)
		}
	}
}

func deployFirst(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// deployDocumentedMetric reports whether README.md names the metric, or the
// histogram that a _bucket, _sum or _count series belongs to, in full or as
// the metrics table abbreviates a second name in a row
// ("..._tenants_updated_timestamp_seconds").
func deployDocumentedMetric(readme []byte, name string) bool {
	base := name
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base = strings.TrimSuffix(base, suffix)
	}
	for _, n := range []string{name, base} {
		if regexp.MustCompile(`(^|[^A-Za-z0-9_:])` + regexp.QuoteMeta(n) + `($|[^A-Za-z0-9_:])`).Match(readme) {
			return true
		}
		if rest, ok := strings.CutPrefix(n, "thanksio_proxy_"); ok &&
			regexp.MustCompile(`\.\.\._`+regexp.QuoteMeta(rest)+`($|[^A-Za-z0-9_:])`).Match(readme) {
			return true
		}
	}
	return false
}

var (
	promAggregations = promWords("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
		"bottomk", "topk", "quantile", "limitk", "limit_ratio")
	promGrouping = promWords("by", "without", "on", "ignoring", "group_left", "group_right")
	promKeywords = promWords("and", "or", "unless", "bool", "offset", "atan2", "inf", "nan")
)

func promWords(words ...string) map[string]bool {
	m := make(map[string]bool, len(words))
	for _, w := range words {
		m[w] = true
	}
	return m
}

// promMetricNames returns the metric names that a PromQL expression selects:
// the identifiers that are neither functions, aggregations or keywords, nor
// label names in matchers and grouping clauses.
func promMetricNames(s string) ([]string, error) {
	var names []string
	// closing returns the index after the bracket that closes the one at i,
	// stepping over quoted strings.
	closing := func(i int) (int, error) {
		open := s[i]
		end := map[byte]byte{'(': ')', '{': '}', '[': ']'}[open]
		depth := 0
		for j := i; j < len(s); j++ {
			switch s[j] {
			case '"', '\'', '`':
				k, err := promSkipString(s, j)
				if err != nil {
					return 0, err
				}
				j = k - 1
			case open:
				depth++
			case end:
				if depth--; depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unbalanced %c at offset %d", open, i)
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			end, err := promSkipString(s, i)
			if err != nil {
				return names, err
			}
			i = end
		case c == '{' || c == '[': // label matchers, ranges and subqueries
			end, err := closing(i)
			if err != nil {
				return names, err
			}
			i = end
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case '0' <= c && c <= '9' || c == '.':
			for i < len(s) && (promIdentByte(s[i]) || s[i] == '.') {
				i++
			}
		case promIdentByte(c):
			j := i
			for j < len(s) && promIdentByte(s[j]) {
				j++
			}
			word := s[i:j]
			k := j
			for k < len(s) && strings.IndexByte(" \t\r\n", s[k]) >= 0 {
				k++
			}
			next := byte(0)
			if k < len(s) {
				next = s[k]
			}
			switch lower := strings.ToLower(word); {
			case promGrouping[lower]:
				if next == '(' {
					end, err := closing(k)
					if err != nil {
						return names, err
					}
					j = end
				}
			case promAggregations[lower] || promKeywords[lower]:
			case next == '(': // a function call
			default:
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names, nil
}

func promSkipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		if s[j] == '\\' && q != '`' {
			j++
			continue
		}
		if s[j] == q {
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at offset %d", i)
}

func promIdentByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == ':'
}

func TestDeployPromMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`up{job="thanksio-proxy"} == 0`:                                                    "up",
		`absent(up{job="x"} == 1)`:                                                         "up",
		`sum by (operation) (rate(thanksio_proxy_store_errors_total[5m])) > 0`:             "thanksio_proxy_store_errors_total",
		`sum(rate(a_total{code=~"5..|error", x='}'}[5m])) / sum(rate(b_total[5m])) > 0.05`: "a_total b_total",
		`histogram_quantile(0.99, sum(rate(h_bucket[5m])) by (le)) > 1e3 or vector(0)`:     "h_bucket",
		`a / on (instance) group_left (version) b offset 5m and bool c`:                    "a b c",
		`max_over_time(x[1h:5m]) > Inf`:                                                    "x",
		"max(\n  thanksio_proxy_tenants{state=\"a\"} # up\n) > 0":                          "thanksio_proxy_tenants",
	} {
		got, err := promMetricNames(expr)
		if err != nil {
			t.Errorf("%s: %v", expr, err)
		}
		if strings.Join(got, " ") != want {
			t.Errorf("promMetricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

func TestDeployBytes(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want int64
	}{
		{"256Mi", 256 << 20}, {"1Gi", 1 << 30}, {"512M", 512e6}, {"1000", 1000}, {"64Ki", 64 << 10},
	} {
		if got, err := deployBytes(tc.q); err != nil || got != tc.want {
			t.Errorf("deployBytes(%q) = %d, %v; want %d", tc.q, got, err, tc.want)
		}
	}
	for _, q := range []string{"", "Mi", "1.5Gi", "lots"} {
		if _, err := deployBytes(q); err == nil {
			t.Errorf("deployBytes(%q): no error", q)
		}
	}
}

func TestDeploySecretFile(t *testing.T) {
	var pod k8sPodSpec
	var c k8sContainer
	if err := yaml.Unmarshal([]byte(`
volumes:
  - name: callers
    secret:
      secretName: callers-secret
      items: [{key: keys, path: callers}]
  - name: whole
    secret: {secretName: whole-secret}
  - name: config
    configMap: {name: cm}
`), &pod); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(`
volumeMounts:
  - {name: callers, mountPath: /etc/callers/}
  - {name: whole, mountPath: /etc/whole}
  - {name: whole, mountPath: /etc/one, subPath: file}
  - {name: config, mountPath: /etc/config}
`), &c); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path                 string
		secret, key, subPath string
		ok                   bool
	}{
		{"/etc/callers/callers", "callers-secret", "keys", "", true},
		{"/etc/callers/other", "", "", "", false}, // not among the items
		{"/etc/whole/anything", "whole-secret", "anything", "", true},
		{"/etc/one", "whole-secret", "file", "file", true},
		{"/etc/config/x", "", "", "", false}, // a ConfigMap
		{"/etc/wholesale/x", "", "", "", false},
	} {
		secret, key, subPath, ok := deploySecretFile(pod, c, tc.path)
		if secret != tc.secret || key != tc.key || subPath != tc.subPath || ok != tc.ok {
			t.Errorf("deploySecretFile(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
				tc.path, secret, key, subPath, ok, tc.secret, tc.key, tc.subPath, tc.ok)
		}
	}
}

func TestDeployDocumentedMetric(t *testing.T) {
	readme := []byte("| `thanksio_proxy_tenants{state}`, `..._tenants_updated_timestamp_seconds` | ... |\n| `thanksio_proxy_refresh_duration_seconds{result}` | |")
	for name, want := range map[string]bool{
		"thanksio_proxy_tenants":                            true,
		"thanksio_proxy_tenants_updated_timestamp_seconds":  true,
		"thanksio_proxy_refresh_duration_seconds_bucket":    true,
		"thanksio_proxy_tenants_updated":                    false,
		"thanksio_proxy_updated_timestamp_seconds":          false,
		"thanksio_proxy_refresh_duration_seconds_something": false,
	} {
		if got := deployDocumentedMetric(readme, name); got != want {
			t.Errorf("deployDocumentedMetric(%q) = %v; want %v", name, got, want)
		}
	}
}

// deployResolvePort returns the container port that a Service's targetPort
// (a number or a port name) reaches, or 0.
func deployResolvePort(port any, named map[string]int, numbers map[int]bool) int {
	switch p := port.(type) {
	case int:
		if numbers[p] {
			return p
		}
	case string:
		return named[p]
	}
	return 0
}

func deployLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// deployOrPod returns the container's setting, or else the pod's.
// deployCheckNonRoot fails the test unless container c of pod runs as a
// non-root user, the one that user describes, cannot escalate its
// privileges and drops every capability; the pod's settings count where
// Kubernetes applies them. It returns the container's and the pod's
// security contexts, empty where they are not set, for the checks that
// only some containers need.
func deployCheckNonRoot(t *testing.T, where string, c k8sContainer, pod k8sPodSpec, user string) (sc, podSC *k8sSecurityContext) {
	t.Helper()
	sc, podSC = c.SecurityContext, pod.SecurityContext
	if sc == nil {
		sc = &k8sSecurityContext{}
	}
	if podSC == nil {
		podSC = &k8sSecurityContext{}
	}
	if nonRoot := deployOrPod(sc.RunAsNonRoot, podSC.RunAsNonRoot); nonRoot == nil || !*nonRoot {
		t.Errorf("%s: securityContext.runAsNonRoot is not true", where)
	}
	if uid := deployOrPod(sc.RunAsUser, podSC.RunAsUser); uid == nil || *uid == 0 {
		t.Errorf("%s: securityContext.runAsUser is not %s", where, user)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: securityContext.allowPrivilegeEscalation is not false", where)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: securityContext.capabilities.drop lacks ALL", where)
	}
	return sc, podSC
}

func deployOrPod[T any](container, pod *T) *T {
	if container != nil {
		return container
	}
	return pod
}

func deploySortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// deployRuleTests is where the promtool test rules cases of the alerts live.
const deployRuleTests = "deploy/testdata/monitoring_test.yaml"

// TestPromtoolRules writes the groups of the PrometheusRules under deploy/
// to a rules file, checks it with promtool check rules, and runs the cases
// of deployRuleTests against it with promtool test rules. Without promtool
// it fails: .ci/install-promtool installs it, and make test runs that.
//
// The cases run on a copy of the rules without annotations, since promtool
// test rules compares an alert's annotations too and the cases give only its
// labels; promtool check rules checks the annotations' templates.
func TestPromtoolRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is not installed (%v): run .ci/install-promtool, or make test, which does", err)
	}
	set := loadDeploySet(t)

	// The groups of every PrometheusRule, as written.
	var groups []map[string]any
	for _, m := range set.manifests {
		if m.kind != "PrometheusRule" {
			continue
		}
		var pr struct {
			Spec struct {
				Groups []map[string]any `yaml:"groups"`
			} `yaml:"spec"`
		}
		m.decode(t, &pr)
		groups = append(groups, pr.Spec.Groups...)
	}
	if len(groups) == 0 {
		t.Fatal("no PrometheusRule under deploy/")
	}
	dir := t.TempDir()
	write := func(name string, v any) string {
		t.Helper()
		b, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	full := write("monitoring.yaml", map[string]any{"groups": groups})
	if out, err := exec.Command(promtool, "check", "rules", full).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the PrometheusRule of deploy/: %v\n%s", err, out)
	}

	// The same rules without annotations, and the cases beside them.
	var alerts []string
	bare := make([]map[string]any, len(groups))
	for i, g := range groups {
		bare[i] = map[string]any{}
		for k, v := range g {
			bare[i][k] = v
		}
		rules, _ := g["rules"].([]any)
		var stripped []any
		for _, r := range rules {
			rule, ok := r.(map[string]any)
			if !ok {
				t.Fatalf("group %v: a rule is not a mapping", g["name"])
			}
			c := map[string]any{}
			for k, v := range rule {
				if k != "annotations" {
					c[k] = v
				}
			}
			if a, ok := rule["alert"].(string); ok {
				alerts = append(alerts, a)
			}
			stripped = append(stripped, c)
		}
		bare[i]["rules"] = stripped
	}
	write("monitoring.rules.yaml", map[string]any{"groups": bare})
	cases, err := os.ReadFile(deployRuleTests)
	if err != nil {
		t.Fatal(err)
	}
	testFile := filepath.Join(dir, filepath.Base(deployRuleTests))
	if err := os.WriteFile(testFile, cases, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "test", "rules", filepath.Base(testFile))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool test rules %s: %v\n%s", deployRuleTests, err, out)
	} else {
		t.Logf("promtool test rules %s:\n%s", deployRuleTests, out)
	}

	// A case per alert, firing and not firing, and the firing one carries
	// the labels that route it.
	var file struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			Name          string `yaml:"name"`
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []struct {
					ExpLabels map[string]string `yaml:"exp_labels"`
				} `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(cases, &file); err != nil {
		t.Fatalf("%s: %v", deployRuleTests, err)
	}
	if !slices.Equal(file.RuleFiles, []string{"monitoring.rules.yaml"}) {
		t.Errorf("%s: rule_files %v, want [monitoring.rules.yaml] (the file this test writes)", deployRuleTests, file.RuleFiles)
	}
	firing, quiet, routed := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, tc := range file.Tests {
		for _, a := range tc.AlertRuleTest {
			if !slices.Contains(alerts, a.Alertname) {
				t.Errorf("%s: test %q checks alert %q, which no PrometheusRule defines", deployRuleTests, tc.Name, a.Alertname)
			}
			if len(a.ExpAlerts) == 0 {
				quiet[a.Alertname] = true
			}
			for _, e := range a.ExpAlerts {
				firing[a.Alertname] = true
				if e.ExpLabels["namespace"] != "" && e.ExpLabels["job"] != "" {
					routed[a.Alertname] = true
				}
			}
		}
	}
	for _, a := range alerts {
		if !firing[a] {
			t.Errorf("%s: no case where %s fires", deployRuleTests, a)
		} else if !routed[a] {
			t.Errorf("%s: no case where %s fires with namespace and job labels to route it by", deployRuleTests, a)
		}
		if !quiet[a] {
			t.Errorf("%s: no case where %s does not fire", deployRuleTests, a)
		}
	}
}
