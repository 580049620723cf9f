package main

// Checks of the Kubernetes examples under deploy/: every file parses; the
// proxy containers set only variables the proxy reads, and it starts with
// them; they are hardened and probed on the ops port; every Secret reference
// resolves in its file; their grace period covers the drain, a refresh in
// flight and its write; Services, PodDisruptionBudgets and ServiceMonitors
// select what they should; the example Redis persists (appendonly yes, on a
// persistent volume); and the alerts use only metrics that README.md
// documents. No network, no kubectl.

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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
// table lists them. thanksio_proxy_tenants{state} is being added together
// with the alerts; drop it from here once README.md documents it.
var deployUndocumentedMetrics = map[string]bool{"thanksio_proxy_tenants": true}

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
	TerminationGracePeriodSeconds *int64              `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               *k8sSecurityContext `yaml:"securityContext"`
	InitContainers                []k8sContainer      `yaml:"initContainers"`
	Containers                    []k8sContainer      `yaml:"containers"`
}

type k8sContainer struct {
	Name            string              `yaml:"name"`
	Image           string              `yaml:"image"`
	RestartPolicy   string              `yaml:"restartPolicy"`
	Env             []k8sEnvVar         `yaml:"env"`
	EnvFrom         []any               `yaml:"envFrom"`
	Ports           []k8sContainerPort  `yaml:"ports"`
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

type k8sSelectorObject struct {
	Spec struct {
		Selector k8sSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type k8sServiceMonitor struct {
	Spec struct {
		Selector  k8sSelector `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
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
}

// deployWorkload is a Deployment (or other pod template) of a file.
type deployWorkload struct {
	file, name string
	spec       k8sWorkload
	ports      map[string]int // container ports by name, all containers
	numbers    map[int]bool   // container port numbers, all containers
	hasProxy   bool
	opsPort    int // the proxy's OPS_ADDR port, when its configuration loads
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
					values[k] = v // base64 for a Secret; only the key matters then
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
		w := &deployWorkload{file: m.file, name: m.name, ports: map[string]int{}, numbers: map[int]bool{}}
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
			run, _, _ := set.proxyEnv(m.file, c)
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
	vars := map[string]string{}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("env"), ","); name != "" {
			vars[name] = f.Tag.Get("envDefault")
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
// (placeholder); and whether any value comes from a Secret.
func (set *deploySet) proxyEnv(file string, c k8sContainer) (run, placeholder map[string]string, usesSecret bool) {
	run, placeholder = map[string]string{}, map[string]string{}
	for _, e := range c.Env {
		switch {
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

func TestDeployExamples(t *testing.T) {
	set := loadDeploySet(t)
	var proxies, redises, rules, monitors int
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
						var p k8sSelectorObject
						m.decode(t, &p)
						if !slices.ContainsFunc(set.workloads, func(w *deployWorkload) bool {
							return w.file == m.file && p.Spec.Selector.matches(w.spec.Spec.Template.Metadata.Labels)
						}) {
							t.Errorf("%s: its selector matches no pod template in %s", m, m.file)
						}
					case "ServiceMonitor":
						monitors++
						deployCheckServiceMonitor(t, set, m)
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
	if rules == 0 || monitors == 0 {
		t.Errorf("found %d PrometheusRules and %d ServiceMonitors under deploy/, want both", rules, monitors)
	}
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
	run, placeholder, usesSecret := set.proxyEnv(m.file, c)
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
	sc, podSC := c.SecurityContext, pod.SecurityContext
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
		t.Errorf("%s: securityContext.runAsUser is not set to a non-root user (65532, distroless nonroot)", where)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: securityContext.readOnlyRootFilesystem is not true", where)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: securityContext.allowPrivilegeEscalation is not false", where)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: securityContext.capabilities.drop lacks ALL", where)
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
	if need := preStop + shutdown + refresh + deployPendingWriteGrace; grace <= need {
		t.Errorf("%s: terminationGracePeriodSeconds (%s) is not above the preStop sleep (%s) + SHUTDOWN_TIMEOUT (%s) + REFRESH_TIMEOUT (%s) + the rotated token's write (%s) = %s: leave a margin",
			where, grace, preStop, shutdown, refresh, deployPendingWriteGrace, need)
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
		sc, podSC := c.SecurityContext, pod.SecurityContext
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
			t.Errorf("%s: securityContext.runAsUser is not a non-root user (999, the image's redis)", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: securityContext.allowPrivilegeEscalation is not false", where)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: securityContext.capabilities.drop lacks ALL", where)
		}
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
	var selected []*deployService
	for _, s := range set.services {
		if sm.Spec.Selector.matches(s.labels) {
			selected = append(selected, s)
		}
	}
	if len(selected) == 0 {
		t.Errorf("%s: its selector matches the labels of no Service under deploy/", m)
	}
	if len(sm.Spec.Endpoints) == 0 {
		t.Errorf("%s: no endpoints", m)
	}
	for _, e := range sm.Spec.Endpoints {
		if e.Path != "/metrics" {
			t.Errorf("%s: endpoint path %q, want /metrics", m, e.Path)
		}
		for _, s := range selected {
			port, ok := s.ports[e.Port]
			switch {
			case !ok:
				t.Errorf("%s: Service %q has no port named %q that reaches a container", m, s.name, e.Port)
			case !s.workload.hasProxy:
				t.Errorf("%s: Service %q selects pods without the proxy", m, s.name)
			case port != s.workload.opsPort:
				t.Errorf("%s: port %q of Service %q reaches container port %d, not the proxy's ops port %d", m, e.Port, s.name, port, s.workload.opsPort)
			}
		}
	}
}

var (
	promDuration = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
	promJob      = regexp.MustCompile(`\bjob\s*=~?\s*"([^"]*)"`)
)

func deployCheckRule(t *testing.T, set *deploySet, m *k8sManifest) {
	var pr k8sPrometheusRule
	m.decode(t, &pr)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The jobs that ServiceMonitors under deploy/ produce: the Services'
	// names.
	jobs := map[string]bool{}
	for _, x := range set.manifests {
		if x.kind != "ServiceMonitor" {
			continue
		}
		var sm k8sServiceMonitor
		x.decode(t, &sm)
		for _, s := range set.services {
			if sm.Spec.Selector.matches(s.labels) {
				jobs[s.name] = true
			}
		}
	}

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
				if !jobs[j[1]] {
					t.Errorf("%s: expr selects job %q, but the ServiceMonitors under deploy/ produce the jobs %v", where, j[1], deploySortedKeys(jobs))
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
}

func deployFirst(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// deployDocumentedMetric reports whether README.md names the metric, or the
// histogram that a _bucket, _sum or _count series belongs to.
func deployDocumentedMetric(readme []byte, name string) bool {
	base := name
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base = strings.TrimSuffix(base, suffix)
	}
	for _, n := range []string{name, base} {
		if regexp.MustCompile(`(^|[^A-Za-z0-9_:])` + regexp.QuoteMeta(n) + `($|[^A-Za-z0-9_:])`).Match(readme) {
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
