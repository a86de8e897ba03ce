// Command kstatus prints what sigs.k8s.io/cli-utils' kstatus library (the status reader
// Flux and kpt use) computes for Kubernetes objects. It reads JSON objects from stdin (one
// object, a JSON array, or a stream of objects) and prints one JSON line per object:
// {"name": ..., "namespace": ..., "status": "Current|InProgress|Failed|...", "message": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func compute(obj map[string]interface{}) (result, error) {
	u := &unstructured.Unstructured{Object: obj}
	r := result{Name: u.GetName(), Namespace: u.GetNamespace()}
	res, err := status.Compute(u)
	if err != nil {
		return r, err
	}
	r.Status = res.Status.String()
	r.Message = res.Message
	return r, nil
}

func main() {
	dec := json.NewDecoder(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: reading JSON from stdin:", err)
			os.Exit(2)
		}
		// Integers stay int64, as the API machinery decodes them (kstatus reads generations).
		var doc interface{}
		if err := utiljson.Unmarshal(raw, &doc); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: reading JSON from stdin:", err)
			os.Exit(2)
		}
		var objs []interface{}
		switch d := doc.(type) {
		case []interface{}:
			objs = d
		default:
			objs = []interface{}{d}
		}
		for _, o := range objs {
			m, ok := o.(map[string]interface{})
			if !ok {
				fmt.Fprintln(os.Stderr, "kstatus: every object must be a JSON object")
				os.Exit(2)
			}
			r, err := compute(m)
			if err != nil {
				fmt.Fprintln(os.Stderr, "kstatus:", err)
				os.Exit(1)
			}
			if err := enc.Encode(r); err != nil {
				os.Exit(1)
			}
		}
	}
}
