// Command gpu-plugin-double is a test double of a GPU device plugin: it speaks the
// kubelet's device-plugin API (v1beta1) for a resource (nvidia.com/gpu by default) and
// advertises devices that do not exist. Pods requesting the resource are scheduled and
// admitted as on a GPU node; a container given "GPUs" gets their ids in
// NVIDIA_VISIBLE_DEVICES and in LLAMANET_GPU_DOUBLE (the mark that they are not real), and
// no device nodes. The test bed's real node runs it beside the kubelet.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the devices once; they never change.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		ids := strings.Join(c.DevicesIds, ",")
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": ids, "LLAMANET_GPU_DOUBLE": ids},
		})
	}
	return resp, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// inode of path, 0 when it does not exist.
func inode(path string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

func register(kubeletSocket, endpoint, resource string) error {
	conn, err := grpc.NewClient("unix://"+kubeletSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     endpoint,
		ResourceName: resource,
	})
	return err
}

func main() {
	dir := flag.String("plugin-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin folder")
	resource := flag.String("resource", "nvidia.com/gpu", "the extended resource advertised")
	count := flag.Int("count", 8, "how many devices to advertise")
	flag.Parse()

	p := &plugin{}
	for i := 0; i < *count; i++ {
		p.devices = append(p.devices, &pluginapi.Device{ID: fmt.Sprintf("gpu-double-%d", i), Health: pluginapi.Healthy})
	}
	kubeletSocket := filepath.Join(*dir, "kubelet.sock")
	endpoint := "llamanet-gpu-double.sock"
	for {
		// The kubelet empties the folder when it starts: serve and register again whenever
		// its socket is new.
		for inode(kubeletSocket) == 0 {
			time.Sleep(200 * time.Millisecond)
		}
		kubelet := inode(kubeletSocket)
		path := filepath.Join(*dir, endpoint)
		_ = os.Remove(path)
		listener, err := net.Listen("unix", path)
		if err != nil {
			log.Fatalf("listening on %s: %v", path, err)
		}
		server := grpc.NewServer()
		pluginapi.RegisterDevicePluginServer(server, p)
		go func() { _ = server.Serve(listener) }()
		if err := register(kubeletSocket, endpoint, *resource); err != nil {
			log.Printf("registering with the kubelet: %v (retrying)", err)
			server.Stop()
			time.Sleep(time.Second)
			continue
		}
		log.Printf("registered %d x %s (test doubles, no hardware) with the kubelet", *count, *resource)
		for inode(kubeletSocket) == kubelet && inode(path) != 0 {
			time.Sleep(time.Second)
		}
		log.Printf("the kubelet restarted: registering again")
		server.Stop()
	}
}
