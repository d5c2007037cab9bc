"""The official Kubernetes Python client against Weft: CRUD, patch, scale, watch.

Usage: python3 python_client.py KUBECONFIG. Exits non-zero on any mismatch.
"""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()

names = {ns.metadata.name for ns in core.list_namespace().items}
assert {"default", "kube-system"} <= names, names

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"from": "python"}), data={"a": "1"})
created = core.create_namespaced_config_map("default", cm)
assert created.metadata.uid and created.metadata.resource_version, created.metadata

patched = core.patch_namespaced_config_map("py-cm", "default", {"data": {"a": "2"}})
assert patched.data["a"] == "2", patched.data
assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

try:
    core.create_namespaced_config_map("default", cm)
    raise SystemExit("duplicate create succeeded")
except ApiException as e:
    assert e.status == 409, e.status

deploy = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="registry.local/hello:1")]),
        ),
    ),
)
apps.create_namespaced_deployment("default", deploy)
scale = apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 3}})
assert scale.spec.replicas == 3, scale
assert apps.read_namespaced_deployment("py-web", "default").spec.replicas == 3

# A watch sees a change made while it is open.
def later():
    time.sleep(0.5)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-late")))

threading.Thread(target=later).start()
seen = []
w = watch.Watch()
for event in w.stream(core.list_namespaced_config_map, "default", resource_version=patched.metadata.resource_version, timeout_seconds=5):
    seen.append((event["type"], event["object"].metadata.name))
    if event["object"].metadata.name == "py-late":
        w.stop()
assert ("ADDED", "py-late") in seen, seen

core.delete_namespaced_config_map("py-cm", "default")
try:
    core.read_namespaced_config_map("py-cm", "default")
    raise SystemExit("deleted configmap still readable")
except ApiException as e:
    assert e.status == 404, e.status

print("python client: ok")
